"""Running the steps: Prefect flows (`flows.py`), what decides a rerun (`fingerprint.py`), the step
registry (`registry.py`), task runners, schedules, the Prefect server and the run summary."""
