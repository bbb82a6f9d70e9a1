// The Go HTTP floor: net/http (standard library only) parsing the serving API's JSON body as
// bench/floor.py does and answering the same constant. What Python adds on top of this is its cost.
//
//	go build -o gofloor . && GOMAXPROCS=1 ./gofloor -addr 127.0.0.1:8080
//
// The body is {"features": [4 numbers]} or {"instances": [[4 numbers], ...]} (1..1000 rows), exactly
// one of the two, no other field, finite numbers (JSON has no NaN/Infinity, so any number that
// parses is finite); anything else is a 422 like the floor's.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"strconv"
	"sync"
)

const row = `{"class_id":0,"class_name":"setosa","probabilities":{"setosa":1.0,"versicolor":0.0,"virginica":0.0}`

var answer = []byte(row + `,"model_version":"floor"}`)

type request struct {
	Features  *[]float64   `json:"features"`
	Instances *[][]float64 `json:"instances"`
}

var batches sync.Map // rows -> []byte, made once per batch size

func batchAnswer(rows int) []byte {
	if b, ok := batches.Load(rows); ok {
		return b.([]byte)
	}
	var buf bytes.Buffer
	buf.WriteString(`{"predictions":[`)
	for i := 0; i < rows; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(row + "}")
	}
	buf.WriteString(`],"model_version":"floor"}`)
	b, _ := batches.LoadOrStore(rows, buf.Bytes())
	return b.([]byte)
}

func problem(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnprocessableEntity)
	w.Write([]byte(`{"detail":` + strconv.Quote(msg) + `}`))
}

// validate returns the number of rows (0 for a single row) or a problem.
func validate(req *request) (int, string) {
	if (req.Features == nil) == (req.Instances == nil) {
		return 0, "provide exactly one of 'features' or 'instances'"
	}
	if req.Features != nil {
		if len(*req.Features) != 4 {
			return 0, "features: 4 numbers"
		}
		return 0, ""
	}
	n := len(*req.Instances)
	if n < 1 || n > 1000 {
		return 0, "instances: 1 to 1000 rows"
	}
	for _, r := range *req.Instances {
		if len(r) != 4 {
			return 0, "instances: 4 numbers per row"
		}
	}
	return n, ""
}

func predict(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	var req request
	if err := dec.Decode(&req); err != nil {
		problem(w, err.Error())
		return
	}
	if dec.More() {
		problem(w, "trailing data after the JSON body")
		return
	}
	n, msg := validate(&req)
	if msg != "" {
		problem(w, msg)
		return
	}
	body := answer
	if req.Instances != nil {
		body = batchAnswer(n)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/predict", predict)
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok"}`))
	})
	log.Printf("gofloor listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, mux))
}
