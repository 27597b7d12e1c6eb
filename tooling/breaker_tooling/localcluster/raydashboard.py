"""A stand-in for the Ray dashboards of the local cluster's RayClusters, on loopback.

KubeRay's operator asks a RayJob's dashboard for the job's status at the head Service's
cluster DNS name (``http://<cluster>-head-svc.<ns>.svc.cluster.local:8265``). kwok's pods
run no Ray, and that name would be looked up in the machine's own DNS, off this machine.
The operator's dashboard client honours ``HTTP_PROXY``, so the harness starts it with
``HTTP_PROXY`` pointing here: every dashboard request arrives at this one server (as a
proxy request, with the whole URL), never resolved, never sent on. It answers the Jobs
API the operator uses: a job submitted is RUNNING until it is stopped.
"""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import time
import urllib.parse
from typing import Any

JOBS = "/api/jobs/"


class Dashboard(http.server.ThreadingHTTPServer):
    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    server: Dashboard

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{self.command} {self.path} -> {format % args}", flush=True)

    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path  # a proxy request carries the whole URL

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self._path()
        with self.server.lock:
            if path == JOBS:
                self._answer(200, list(self.server.jobs.values()))
                return
            job = self.server.jobs.get(path.removeprefix(JOBS).strip("/"))
        if job is None:
            self._answer(404, {"error": "no such job"})
        else:
            self._answer(200, job)

    def do_POST(self) -> None:
        path = self._path()
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if path == JOBS:
            job_id = str(request.get("submission_id") or f"raysubmit_{len(self.server.jobs)}")
            with self.server.lock:
                self.server.jobs[job_id] = {
                    "job_id": job_id,
                    "submission_id": job_id,
                    "entrypoint": request.get("entrypoint", ""),
                    "status": "RUNNING",
                    "message": "running (the local cluster's stand-in dashboard)",
                    "start_time": int(time.time() * 1000),
                }
            self._answer(200, {"job_id": job_id, "submission_id": job_id})
        elif path.endswith("/stop"):
            job_id = path.removeprefix(JOBS).removesuffix("/stop").strip("/")
            with self.server.lock:
                if job_id in self.server.jobs:
                    self.server.jobs[job_id]["status"] = "STOPPED"
            self._answer(200, {"stopped": True})
        else:
            self._answer(404, {"error": "not served"})

    def do_DELETE(self) -> None:
        with self.server.lock:
            self.server.jobs.pop(self._path().removeprefix(JOBS).strip("/"), None)
        self._answer(200, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    Dashboard(args.port).serve_forever()


if __name__ == "__main__":
    main()
