"""Render a screenshot of the running dashboard to docs/screenshot.png.

    python docs/screenshot.py                 # start a private stack with 10 min of history
    python docs/screenshot.py --url URL       # or photograph a dashboard that is running
    python docs/screenshot.py --replication   # /pipeline's Replication panel, a broker of a three-node cluster killed

--replication runs `run all` on a three-node Apache Kafka cluster (pipeline.servers: Java and
Maven), kills the broker leading the most partitions and photographs the panel once the page
shows its leaderships moved, to docs/replication.png.

Needs what the tests need: selenium (tests/requirements.txt) and Debian's chromium + chromedriver.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import config
from pipeline.producer import sensors
from pipeline.schema import TOPICS
from pipeline.servers import Kafka
from pipeline.store import open_store
from tests.helpers import Stack, browser, wait_for


def backfill(cfg: config.Config, minutes: int) -> None:
    """Write `minutes` of simulated readings, one a second per sensor, straight into the store."""
    now = int(time.time() * 1000)
    with open_store(cfg.store_url) as store:
        store.ensure_tables()
        for spec in TOPICS.values():
            readers = sensors(spec, cfg)
            rows = [spec.model(**read(ms)) for ms in range(now - minutes * 60_000, now, 1000) for _, read in readers]
            store.write(spec, rows, now)


def shoot(url: str, out: Path) -> None:
    driver = browser("--hide-scrollbars", "--window-size=1400,1050")
    try:
        driver.get(url)
        wait_for(lambda: driver.find_element("id", "status").text == "live", 30, "the page to go live")
        time.sleep(5)  # let a few frames arrive
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def shoot_replication(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="screenshot-") as tmp, Kafka(3) as cluster, \
            Stack(Path(tmp), KAFKA_BOOTSTRAP_SERVERS=cluster.bootstrap) as stack:
        stack.spawn("pipeline.run", "all", "--rate", "5", log_name="all")
        url = f"http://127.0.0.1:{stack.env['DASH_PORT']}/pipeline"
        wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, 90, "the dashboard to answer", interval=0.5, ignore=(OSError,))
        driver = browser("--hide-scrollbars", "--window-size=1400,1400")
        try:
            driver.get(url)
            lead = "return document.querySelectorAll('#replicas-table td[data-broker=\"%d\"][data-role=\"leader\"]').length"
            wait_for(lambda: driver.find_elements("css selector", '#replicas-table td[data-role="leader"]'), 90, "the replicas grid")
            victim = cluster.busiest_leader(TOPICS)
            cluster.kill(victim)
            wait_for(lambda: driver.execute_script(lead % victim) == 0, 60, f"broker {victim}'s leaderships moved on the page")
            wait_for(lambda: driver.find_elements("css selector", ".repl-event.isr-shrink"), 30, "the in-sync sets shrinking")
            driver.find_element("id", "panel-replication").screenshot(str(out))
        finally:
            driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running dashboard to photograph")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--history-minutes", type=int, default=10)
    parser.add_argument("--replication", action="store_true", help="photograph /pipeline's Replication panel with a broker killed")
    args = parser.parse_args()
    if args.replication:
        args.out = ROOT / "docs" / "replication.png" if args.out == parser.get_default("out") else args.out
        shoot_replication(args.out)
    elif args.url:
        shoot(args.url, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="screenshot-") as tmp, Stack(Path(tmp)) as stack:
            backfill(stack.config(), args.history_minutes)
            stack.spawn("pipeline.run", "all", log_name="all")
            url = f"http://127.0.0.1:{stack.env['DASH_PORT']}/"
            wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, 60, "the dashboard to answer", interval=0.5, ignore=(OSError,))
            time.sleep(10)  # some live points on top of the history
            shoot(url, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
