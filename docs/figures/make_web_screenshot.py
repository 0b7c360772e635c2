"""Redraw docs/figures/web.png: the web page with a result table and a 3D view, in headless Chromium.

    PYTHONPATH=. python docs/figures/make_web_screenshot.py [--model BUNDLE] [--out docs/figures/web.png]

Starts ``lieprop serve`` on a free port with the bundled model (or ``--model``), types a few SMILES into the page
and saves the window. Needs what tests/test_web.py needs: selenium, and apt's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from test_service import start_server  # noqa: E402
from test_web import KEY, headless_chromium, open_page_with_key, wait_for  # noqa: E402

MOLECULES = "CCO ethanol\nc1ccoc1 furan\nOC(=O)C=O glyoxylic-acid\nCC(=O)N acetamide\nC1CC ring-not-closed\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "web.png")
    args = parser.parse_args()
    from selenium.webdriver.common.by import By

    from lieprop.model.loading import default_model_path

    with tempfile.TemporaryDirectory() as tmp:
        # keyed, as the tests' page helper expects (it types the key after the page's 401 hint)
        server = start_server(Path(tmp), args.model or default_model_path(), env={"LIEPROP_API_KEY": KEY})
        driver = headless_chromium(1280, 900)
        try:
            open_page_with_key(driver, server)
            for name in ("lumo", "gap", "mu"):
                box = driver.find_element(By.CSS_SELECTOR, f"input[name=property][value={name}]")
                if box.is_selected():
                    box.click()
            driver.find_element(By.ID, "molecules").send_keys(MOLECULES)
            driver.find_element(By.ID, "predict").click()
            wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#viewer canvas"), what="the 3D view")
            driver.find_element(By.CSS_SELECTOR, "#results tr[data-id=furan] button").click()
            time.sleep(1.0)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
            server.stop()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
