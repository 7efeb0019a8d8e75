#!/usr/bin/python3
"""Watches aurum serve's status page in headless Chromium (selenium + chromedriver).

Usage: statuspage.py URL CHECKS-JSON TIMEOUT

Loads URL once and never reloads it: the page's own refresh must bring every change. Waits
until every check holds, then prints what the page shows as JSON and exits 0; at TIMEOUT it
prints the same and exits 1. A check is [kind, key, field, text]: kind "node" (key a node name,
field revision|health|rollout) or "rollout" (key its number, field state); it holds when the
cell contains text.
"""
import json
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def read(drv):
    shown = {"node": {}, "rollout": {}, "loads": drv.execute_script("return performance.timeOrigin")}
    for row in drv.find_elements(By.CSS_SELECTOR, "#nodes tr[id^=node-]"):
        name = row.get_attribute("id")[len("node-"):]
        shown["node"][name] = {
            f: row.find_element(By.CSS_SELECTOR, "td." + f).text for f in ("revision", "staged", "health", "rollout")
        }
    for row in drv.find_elements(By.CSS_SELECTOR, "#rollouts tr[id^=rollout-]"):
        rid = row.get_attribute("id")[len("rollout-"):]
        shown["rollout"][rid] = {"state": row.find_element(By.CSS_SELECTOR, "td.state").text}
    return shown


def holds(shown, check):
    kind, key, field, text = check
    return text in shown[kind].get(key, {}).get(field, "")


def main():
    url, checks, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        drv.get(url)
        first = drv.execute_script("return performance.timeOrigin")
        deadline = time.time() + timeout
        shown = {}
        while True:
            try:
                shown = read(drv)
            except (StaleElementReferenceException, WebDriverException):
                time.sleep(0.2)  # the page reloaded under us
                continue
            # Whether the page has reloaded itself since the browser opened it.
            shown["reloaded"] = shown["loads"] != first
            if all(holds(shown, c) for c in checks):
                print(json.dumps(shown))
                return 0
            if time.time() > deadline:
                print(json.dumps(shown))
                return 1
            time.sleep(0.5)
    finally:
        drv.quit()


sys.exit(main())
