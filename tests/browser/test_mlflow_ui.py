"""The MLflow UI as a data scientist sees it, in headless Chromium (Debian's), after two real trainer runs.

A real MLflow server (the documented command of docs/interfaces.md, from the pinned mlflow of the
project's venv, on loopback with its data in a temp dir) and two runs of the trainer's CLI entry point
against it. Every check reads the rendered page: React renders asynchronously, so each waits (bounded)
for text to appear. Screenshots go to tests/browser/artifacts/ (kept by CI); the runs view is also
copied to docs/mlflow-runs.png for the README when MLFLOW_UI_UPDATE_DOCS=1 (tests/browser/run --update-docs).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "images" / "training" / "tests"))
sys.path.insert(0, str(REPO / "images" / "training"))

from trainer_testlib import running_mlflow_server

pytest.importorskip("selenium")
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(
    os.environ.get("MLFLOW_UI_ARTIFACTS", Path(__file__).parent / "artifacts")
)
DOCS_SCREENSHOT = REPO / "docs" / "mlflow-runs.png"
MODEL = "iris-classifier"
EXPERIMENT = "iris-classification"
RUNS = {
    "baseline": ("20", "2"),
    "deeper": ("50", "5"),
}  # run name: (n_estimators, max_depth)
WAIT_S = 60.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1920,1080",
)


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"none of {names} on PATH: run tests/browser/run (it installs Debian's chromium and chromium-driver)"
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A real MLflow server with the two runs of RUNS (policy always: the second is the champion)."""
    from trainer import cli

    data = tmp_path_factory.mktemp("mlflow-ui")
    saved = dict(os.environ)
    with running_mlflow_server(data) as (server, _proc):
        try:
            os.environ.update(
                {
                    "MLFLOW_TRACKING_URI": server.uri,
                    "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
                    "MODEL_NAME": MODEL,
                    "MODELS_DIR": str(data / "models"),
                    "MLFLOW_CONNECT_RETRIES": "3",
                    "MLFLOW_CONNECT_BACKOFF_SECONDS": "0.2",
                    "PROMOTION_POLICY": "always",
                }
            )
            for name, (n, depth) in RUNS.items():
                assert (
                    cli.main(
                        ["--n-estimators", n, "--max-depth", depth, "--run-name", name]
                    )
                    == 0
                ), name
        finally:
            os.environ.clear()
            os.environ.update(saved)

        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = {
            r.info.run_name: r for r in client.search_runs([experiment.experiment_id])
        }
        assert set(runs) == set(RUNS)
        yield {
            "uri": server.uri,
            "experiment_id": experiment.experiment_id,
            "runs": runs,
            "client": client,
        }


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-profile-')}"
    )
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, predicate, what: str, timeout: float = WAIT_S):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(
            lambda d: predicate(d)
        )
    except TimeoutException:
        shot = _screenshot(driver, "timeout")
        body = driver.find_element(By.TAG_NAME, "body").text[:2000]
        pytest.fail(
            f"not within {timeout:.0f}s: {what}\nURL {driver.current_url}\nscreenshot {shot}\npage:\n{body}"
        )


def _text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for_texts(driver, texts, what: str):
    _wait(driver, lambda d: all(t in _text(d) for t in texts), f"{what}: {list(texts)}")


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _open(driver, url: str):
    driver.get(url)
    _wait(
        driver,
        lambda d: d.execute_script("return document.readyState") == "complete",
        f"load of {url}",
    )


def _close_assistant(driver):
    """MLflow 3.17 opens its assistant panel on first load; close it so the page has its full width."""
    buttons = driver.find_elements(
        By.CSS_SELECTOR, 'button[data-component-id="mlflow.assistant.chat_panel.close"]'
    )
    for button in buttons:
        if button.is_displayed():
            button.click()
    _wait(
        driver,
        lambda d: (
            not any(
                b.is_displayed()
                for b in d.find_elements(
                    By.CSS_SELECTOR,
                    'button[data-component-id="mlflow.assistant.chat_panel.close"]',
                )
            )
        ),
        "assistant panel closed",
    )


def _row_text(driver, run_name: str) -> str:
    """The text of the runs-table row of run_name (ag-grid splits a row into pinned and scrolled parts)."""
    return driver.execute_script(
        """
        const name = arguments[0];
        const cell = [...document.querySelectorAll('[role="row"] a, [role="row"] span, [role="row"] div')]
            .find(el => el.textContent.trim() === name);
        if (!cell) return '';
        const row = cell.closest('[role="row"]');
        const index = row.getAttribute('row-index');
        if (index === null) return row.innerText;
        return [...document.querySelectorAll(`[role="row"][row-index="${index}"]`)].map(r => r.innerText).join(' | ');
        """,
        run_name,
    )


def _row_index(driver, run_name: str) -> int:
    index = driver.execute_script(
        """
        const cell = [...document.querySelectorAll('[role="row"] a, [role="row"] span')]
            .find(el => el.textContent.trim() === arguments[0]);
        return cell ? cell.closest('[role="row"]').getAttribute('row-index') : null;
        """,
        run_name,
    )
    assert index is not None, f"no table row for {run_name}"
    return int(index)


def test_experiment_link_opens_on_the_training_runs(trained, browser):
    """The link the trainer prints for the experiment opens the Runs tab, not the GenAI overview/traces."""
    from trainer import tracking

    _open(browser, tracking.experiment_url(trained["uri"], trained["experiment_id"]))
    _wait_for_texts(browser, [*RUNS, "matching runs"], "both runs listed")
    assert f"/experiments/{trained['experiment_id']}/runs" in browser.current_url
    assert "workflowType=machine_learning" in browser.current_url
    body = _text(browser)
    assert (
        "Token Usage" not in body
        and "No data available for the selected time range" not in body
    )
    _close_assistant(browser)
    _screenshot(browser, "experiment-runs-default-columns")


def test_runs_view_shows_both_runs_with_metrics_params_datasets_and_models(
    trained, browser
):
    from trainer import tracking

    _open(browser, tracking.runs_view_url(trained["uri"], trained["experiment_id"]))
    _wait_for_texts(
        browser,
        ["Training metrics", "accuracy", "f1_macro", "n_estimators", "max_depth"],
        "view columns",
    )
    _close_assistant(browser)
    for name, run in trained["runs"].items():
        metrics, params = run.data.metrics, run.data.params
        expected = [
            name,
            # The table shows the full float; compare its first digits.
            f"{metrics['accuracy']}"[:6],
            f"{metrics['f1_macro']}"[:6],
            params["n_estimators"],
            params["max_depth"],
            "iris-train (",
            MODEL,
            f"v{run.data.tags['model_version']}",
        ]
        _wait(
            browser,
            lambda d, e=expected, n=name: all(t in _row_text(d, n) for t in e),
            f"row of {name}: {expected}",
        )
    # Sorted by accuracy, best first (ag-grid places rows by their row-index, not by DOM order).
    best, other = sorted(
        trained["runs"], key=lambda n: -trained["runs"][n].data.metrics["accuracy"]
    )
    assert _row_index(browser, best) < _row_index(browser, other)
    shot = _screenshot(browser, "runs-view")
    if os.environ.get("MLFLOW_UI_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_run_page_shows_metrics_datasets_and_the_plots(trained, browser, tmp_path):
    from PIL import Image
    from trainer import tracking

    run = trained["runs"]["deeper"]
    run_url = tracking.run_url(
        trained["uri"], trained["experiment_id"], run.info.run_id
    )
    _open(browser, run_url)
    _wait_for_texts(
        browser,
        [
            "deeper",
            "accuracy",
            str(run.data.metrics["accuracy"]),
            "iris-train",
            "n_estimators",
            "Description",
        ],
        "run overview",
    )
    _close_assistant(browser)
    _screenshot(browser, "run-overview")

    # The artifacts tab: open it on the first plot, then click the second in the tree, as a user does.
    base = run_url.split("?")[0]
    _open(
        browser,
        f"{base}/artifacts/plots/confusion_matrix.png?workflowType=machine_learning",
    )
    for plot in ("plots/confusion_matrix.png", "plots/feature_importance.png"):
        name = plot.rsplit("/", 1)[1]
        if plot != "plots/confusion_matrix.png":
            _wait(
                browser,
                lambda d, n=name: [
                    e
                    for e in d.find_elements(By.XPATH, f"//*[text()='{n}']")
                    if e.is_displayed()
                ],
                f"{name} in the artifact tree",
            )[0].click()
        _wait_for_texts(
            browser,
            ["confusion_matrix.png", "feature_importance.png", plot],
            f"artifact tree at {plot}",
        )
        filename = plot.rsplit("/", 1)[1]
        # The preview is an <img> of the artifact (a blob: URL): find one with the PNG's exact size.
        local = trained["client"].download_artifacts(
            run.info.run_id, plot, str(tmp_path)
        )
        with Image.open(local) as image:
            size = list(image.size)
        _wait(
            browser,
            lambda d, want=size: (
                want
                in d.execute_script(
                    "return [...document.images].filter(i => i.complete).map(i => [i.naturalWidth, i.naturalHeight]);"
                )
            ),
            f"{filename} rendered as an image of {size[0]}x{size[1]}",
        )
        _screenshot(browser, f"artifact-{filename[:-4]}")


def test_registered_model_shows_versions_alias_and_descriptions(trained, browser):
    champion = trained["client"].get_model_version_by_alias(MODEL, "champion").version
    assert champion == "2"  # policy always: the last run
    _open(browser, f"{trained['uri']}/#/models/{MODEL}")
    _wait_for_texts(
        browser,
        [MODEL, "Version 1", "Version 2", "champion", "Run `baseline`"],
        "model page",
    )
    row = browser.execute_script(
        "const r = [...document.querySelectorAll('tr, [role=\"row\"]')]"
        ".find(r => r.innerText.includes('Version ' + arguments[0]));"
        "return r ? r.innerText : '';",
        champion,
    )
    assert "champion" in row and "deeper" in row, row
    _close_assistant(browser)
    _screenshot(browser, "registered-model")

    _open(browser, f"{trained['uri']}/#/models/{MODEL}/versions/{champion}")
    run = trained["runs"]["deeper"]
    _wait_for_texts(
        browser,
        [
            "champion",
            "Run deeper",
            "n_estimators=50",
            f"{run.data.metrics['accuracy']:.4f}",
            "Promotion",
        ],
        "model version page with its description",
    )
    _screenshot(browser, "model-version")
