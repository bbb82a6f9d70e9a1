module opsdemo/bench/gofloor

go 1.23
