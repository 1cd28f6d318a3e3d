#!/bin/sh
# `make test` runs a browser test (tests/test_webui_browser.py) on the system's Chromium: Playwright
# drives it through `executable_path`, and no browser can be downloaded at run time. Present: done at
# once. Missing: installed with apt when we are root and have apt-get, else one line naming the package.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "make test: installing Chromium for the browser test (apt-get install chromium)" >&2
    if apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; then
        exit 0
    fi
fi
echo "make test: the browser test needs Chromium: install the 'chromium' package (sudo apt-get install chromium)" >&2
exit 1
