"""A throwaway cluster on this machine, for trying and testing what several machines do.

``nas cluster up`` starts, loopback only, every service a team's machines share:

- **PostgreSQL** (``initdb`` into ``<root>/pg``; run as the unprivileged ``postgres`` or ``nobody``
  user when started as root, since PostgreSQL refuses root), with one database each for the Optuna
  studies (``optuna``), MLflow (``mlflow``) and Prefect (``prefect``);
- an **MLflow tracking server** on it, serving artifacts itself (``--artifacts-destination``), so
  that runs logged from any machine keep their files in one place (without MLflow's GenAI job
  runner, ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``, which nothing here uses);
- a **Prefect server** on the same PostgreSQL (unless ``--no-prefect``);
- a **Dask scheduler** and ``--workers`` Dask workers, each started in an empty folder of its own
  (``<root>/worker-N``) with no tracking or study settings in its environment, as a worker on another
  host would be: everything a task needs travels with it.

It writes ``<root>/cluster.json`` (the services, their ports and process ids) and prints the
settings to export; ``nas cluster env`` prints them again, ``nas cluster down`` stops everything.
On real hosts the same services run once each (see the docs, "Several machines").
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from nas.runs.files import write_json
from nas.utils import NasError

STATE = "cluster.json"
# an MLflow server without its GenAI job runner (seven processes that each import MLflow)
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# Dask's diagnostics for its dashboard, which these services never start: the statistical profiler
# samples every thread each 10 ms, the system monitor and the event-loop tick run every 0.5 s and
# 20 ms.  Idle, a scheduler and two workers (with their nannies) spent about 11 CPU-seconds a
# minute, 2.5 with these settings.  A setting of the user's own environment wins.
DASK_QUIET_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
                  "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "2s",
                  "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s"}


def quiet_dask() -> None:
    """Give this process (and the Dask workers it starts) ``DASK_QUIET_ENV`` where the environment
    sets nothing else, before a local Dask cluster starts."""
    import dask
    import distributed  # noqa: F401  (registers the defaults that refresh() keeps)

    for key, value in DASK_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    dask.config.refresh()
USER = "nas"  # the database role
DATABASES = ("optuna", "mlflow", "prefect")
# settings that must not leak from the shell into a worker: a worker gets them from each task
WORKER_SCRUB = ("MLFLOW_TRACKING_URI", "NAS_OPTUNA_STORAGE", "NAS_MLFLOW_EXPERIMENT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> Path:
    env = os.environ.get("NAS_PG_BINDIR")
    if env:
        return Path(env)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").is_file():
            return Path(out)
    raise NasError("cluster: PostgreSQL's initdb not found (install PostgreSQL 15+, or set NAS_PG_BINDIR to "
                   "the folder holding initdb and pg_ctl)")


def _run_as() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return []
    import pwd

    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    raise NasError("cluster: running as root, and neither a 'postgres' nor a 'nobody' user exists to run "
                   "PostgreSQL (it refuses root)")


def _chown_for(prefix: list[str], path: Path) -> None:
    if prefix:
        import pwd

        user = pwd.getpwnam(prefix[2])
        for p in [path, *path.rglob("*")]:
            os.chown(p, user.pw_uid, user.pw_gid)


def _wait_http(url: str, timeout: float, what: str, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    raise NasError(f"cluster: {what} did not answer at {url} within {timeout:.0f} s (log {log}: "
                   f"{tail[0][:200] if tail else 'empty'})")


def _start(cmd: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _started(pid: int) -> float | None:
    """The start time of process ``pid`` (what, with the pid, names one process), or None when gone."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, started: float | None) -> bool:
    """Whether ``pid`` is still the process that was started at ``started``."""
    now = _started(pid)
    return now is not None and started is not None and abs(now - started) < 0.01


WORKER_NAME = re.compile(r"worker-[1-9][0-9]{0,3}")
SERVICES = ("postgres", "mlflow", "prefect", "dask-scheduler")


def read_state(path: Path, root: Path) -> dict[str, Any]:
    """``cluster.json``, checked: services by name, ports, process ids and start times, folders inside
    the cluster's root (PostgreSQL's data: there or a ``nas-cluster-pg-`` folder of the system's
    temporary folder).  The file names no program, command or environment: what runs is built in
    code.  Anything else is refused in one line naming the file and the key."""
    from nas.runs.files import read_json

    doc = read_json(path)
    if not isinstance(doc, dict):
        raise NasError(f"{path}: not a cluster state (expected a JSON object)")
    services = doc.get("services", [])
    if not isinstance(services, list) or not all(isinstance(n, str) for n in services):
        raise NasError(f"{path}: key 'services' expects a list of service names")
    for key, value in doc.items():
        if key in ("root", "services"):
            continue
        if key not in SERVICES and not WORKER_NAME.fullmatch(str(key)):
            raise NasError(f"{path}: unknown key {str(key)[:40]!r} (expected a service: {', '.join(SERVICES)}, worker-N)")
        _check_service(path, root, key, value)
    unknown = [n for n in services if n not in doc]
    if unknown:
        raise NasError(f"{path}: service {unknown[0][:40]!r} is listed but has no entry")
    return doc


def _check_service(path: Path, root: Path, name: str, spec: Any) -> None:
    import tempfile

    allowed = {"port", "pid", "started", "data"} if name == "postgres" else {"port", "pid", "started"}
    if not isinstance(spec, dict) or set(spec) - allowed:
        extra = sorted(set(spec) - allowed)[0] if isinstance(spec, dict) else None
        raise NasError(f"{path}: key {name!r}" + (f" has an unknown field {str(extra)[:40]!r}" if extra else
                       " expects an object") + f" (a service holds only {', '.join(sorted(allowed))})")
    for field, lo, hi in (("port", 1, 65535), ("pid", 1, 2**31)):
        v = spec.get(field)
        if v is not None and (type(v) is not int or not lo <= v <= hi):
            raise NasError(f"{path}: {name}.{field} expects an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    if spec.get("started") is not None and not isinstance(spec["started"], (int, float)):
        raise NasError(f"{path}: {name}.started expects a number (a process start time)")
    if "data" in spec:
        data = Path(str(spec["data"])).resolve()
        tmp = Path(tempfile.gettempdir()).resolve()
        if not (data.is_relative_to(root) or (data.parent.parent == tmp and data.parent.name.startswith("nas-cluster-pg-"))):
            raise NasError(f"{path}: postgres.data {str(spec['data'])[:80]!r} is outside the cluster's folder")


def _bin(name: str) -> str:
    """A console script of this environment (beside the running Python), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else (shutil.which(name) or name)


class Cluster:
    """The services of one cluster folder (``root``), read from and written to ``<root>/cluster.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.state_path = self.root / STATE
        self.state: dict[str, Any] = read_state(self.state_path, self.root) if self.state_path.is_file() else {}

    # ------------------------------------------------------------------ settings
    def pg_url(self, db: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{USER}@127.0.0.1:{self.state['postgres']['port']}/{db}"

    def env(self) -> dict[str, str]:
        """The settings a client exports to use the cluster."""
        s = self.state
        env = {"NAS_OPTUNA_STORAGE": self.pg_url("optuna"),
               "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{s['mlflow']['port']}",
               "NAS_DASK_ADDRESS": f"tcp://127.0.0.1:{s['dask-scheduler']['port']}"}
        if "prefect" in s:
            env["PREFECT_API_URL"] = f"http://127.0.0.1:{s['prefect']['port']}/api"
            # a Prefect server whose database restarts answers 500 for a moment: clients retry it
            env["PREFECT_CLIENT_RETRY_EXTRA_CODES"] = "500"
        return env

    def exports(self) -> str:
        return "\n".join(f"export {k}={v}" for k, v in self.env().items())

    def _save(self) -> None:
        write_json(self.state_path, self.state)

    # ------------------------------------------------------------------ up
    def up(self, workers: int = 2, prefect: bool = True, timeout: float = 180.0, log: Any = None) -> dict[str, str]:
        """Start every service (see the module's docstring); returns the settings to export."""
        say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if self.state.get("services"):
            raise NasError(f"{self.state_path}: a cluster is already up in {self.root} ('nas cluster down' first)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = {"root": str(self.root), "services": []}
        try:
            self._postgres(timeout, say)
            self._mlflow(timeout, say)
            if prefect:
                self._prefect(timeout, say)
            self._dask(workers, timeout, say)
        except BaseException:
            self.down(quiet=True)
            raise
        return self.env()

    def _postgres(self, timeout: float, say: Any) -> None:
        bindir, prefix = _pg_bindir(), _run_as()
        pg = self.root / "pg"
        if pg.exists():
            shutil.rmtree(pg)
        (pg / "data").mkdir(parents=True)
        _chown_for(prefix, pg)
        if prefix and subprocess.run([*prefix, "test", "-w", str(pg / "data")], check=False).returncode:
            # a folder the unprivileged user cannot reach (a parent is private to root): the data
            # goes to a folder of its own under the system's temporary folder, removed by `down`
            import tempfile

            shutil.rmtree(pg)
            pg = Path(tempfile.mkdtemp(prefix="nas-cluster-pg-"))
            (pg / "data").mkdir()
            _chown_for(prefix, pg)
            os.chmod(pg, 0o755)
        port = free_port()
        init = subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(pg / "data"), "-U", USER, "--auth=trust",
                               "-E", "UTF8", "--no-sync"], capture_output=True, text=True, check=False)
        if init.returncode:
            last = (init.stderr or init.stdout).strip().splitlines()[-1:] or [""]
            raise NasError(f"cluster: initdb in {pg / 'data'} failed: {last[0][:200]}")
        self.state["postgres"] = {"port": port, "data": str(pg / "data")}
        self.start_postgres(timeout)
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres", autocommit=True) as conn:
            for db in DATABASES:
                conn.execute(f'CREATE DATABASE "{db}"')
        self.state["services"].append("postgres")
        self._save()
        say(f"postgres    127.0.0.1:{port}  (data {pg / 'data'})")

    def start_postgres(self, timeout: float = 60.0) -> None:
        """Start (or start again) the cluster's PostgreSQL; loopback TCP only, no Unix socket."""
        p = self.state["postgres"]
        opts = f"-p {p['port']} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        run = subprocess.run([*_run_as(), str(_pg_bindir() / "pg_ctl"), "-D", p["data"], "-l",
                              str(Path(p["data"]).parent / "postgres.log"), "-o", opts, "-w", "-t", str(int(timeout)),
                              "start"], capture_output=True, text=True, check=False)
        if run.returncode:
            raise NasError(f"cluster: PostgreSQL did not start ({(run.stderr or run.stdout).strip()[:200]}; log "
                           f"{Path(p['data']).parent / 'postgres.log'})")

    def stop_postgres(self, mode: str = "fast") -> None:
        p = self.state["postgres"]
        subprocess.run([*_run_as(), str(_pg_bindir() / "pg_ctl"), "-D", p["data"], "-m", mode, "-w", "stop"],
                       capture_output=True, text=True, check=False)

    def _mlflow(self, timeout: float, say: Any) -> None:
        port = free_port()
        folder = self.root / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        self.state["mlflow"] = {"port": port}
        self.start_service("mlflow", timeout)
        self.state["services"].append("mlflow")
        self._save()
        say(f"mlflow      http://127.0.0.1:{port}  (artifacts {folder / 'artifacts'})")

    def _prefect(self, timeout: float, say: Any) -> None:
        port = free_port()
        folder = self.root / "prefect"
        folder.mkdir(parents=True, exist_ok=True)
        self.state["prefect"] = {"port": port}
        self.start_service("prefect", timeout)
        self.state["services"].append("prefect")
        self._save()
        say(f"prefect     http://127.0.0.1:{port}/api")

    def _dask(self, workers: int, timeout: float, say: Any) -> None:
        port = free_port()
        sched = self.root / "dask-scheduler"
        sched.mkdir(parents=True, exist_ok=True)
        self.state["dask-scheduler"] = {"port": port}
        self.start_service("dask-scheduler", timeout)
        self.state["services"].append("dask-scheduler")
        self._save()
        address = f"tcp://127.0.0.1:{port}"
        for i in range(1, workers + 1):
            self.add_worker(f"worker-{i}", timeout)
        self._wait_workers(address, workers, timeout)
        say(f"dask        {address}  ({workers} workers in {self.root}/worker-N)")

    def add_worker(self, name: str, timeout: float = 60.0) -> None:
        """Start a Dask worker in its own empty folder ``<root>/<name>``, one process, one thread."""
        if not WORKER_NAME.fullmatch(name):
            raise NasError(f"cluster: worker name {name[:40]!r} (expected worker-N)")
        (self.root / name).mkdir(parents=True, exist_ok=True)
        self.state[name] = {}
        self.start_service(name, timeout)
        if name not in self.state["services"]:
            self.state["services"].append(name)
        self._save()

    def _wait_workers(self, address: str, n: int, timeout: float) -> None:
        from distributed import Client

        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    # ------------------------------------------------------------------ processes
    def start_service(self, name: str, timeout: float = 60.0) -> None:
        """Start (or start again) a service of the cluster by name."""
        if name == "postgres":
            return self.start_postgres(timeout)
        spec = self.state[name]
        cmd, log, cwd, extra, scrub = self._launch(name)
        env = {**(DASK_QUIET_ENV if name.startswith(("dask", "worker")) else {}),
               **{k: v for k, v in os.environ.items() if not (scrub and k in WORKER_SCRUB)}}
        env.update(extra)
        proc = _start(cmd, log, cwd, env)
        spec["pid"], spec["started"] = proc.pid, _started(proc.pid)
        self._save()
        health = {"mlflow": f"http://127.0.0.1:{spec.get('port')}/health",
                  "prefect": f"http://127.0.0.1:{spec.get('port')}/api/health"}.get(name)
        if health:
            _wait_http(health, timeout, name, log)
        elif name == "dask-scheduler":
            self._wait_port(spec["port"], timeout, name, log)

    def _launch(self, name: str) -> tuple[list[str], Path, Path, dict[str, str], bool]:
        """A service's command, log, folder, environment and whether the shell's tracking settings are
        scrubbed: built here from its name and port, never read from the state file."""
        spec, folder = self.state[name], self.root / name
        if name == "mlflow":
            folder = self.root / "mlflow"
            cmd = [_bin("mlflow"), "server", "--backend-store-uri", self.pg_url("mlflow"), "--serve-artifacts",
                   "--artifacts-destination", (folder / "artifacts").as_uri(), "--host", "127.0.0.1", "--port",
                   str(spec["port"]), "--workers", "1"]
            return cmd, folder / "server.log", self.root, {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                                                          **MLFLOW_SERVER_ENV}, False
        if name == "prefect":
            cmd = [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(spec["port"]),
                   "--analytics-off"]
            return cmd, folder / "server.log", self.root, {
                "PREFECT_HOME": str(folder / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                "PREFECT_API_DATABASE_CONNECTION_URL": self.pg_url("prefect", "asyncpg")}, False
        if name == "dask-scheduler":
            cmd = [_bin("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(spec["port"]), "--no-dashboard"]
            return cmd, folder / "scheduler.log", self.root, {}, False
        address = f"tcp://127.0.0.1:{self.state['dask-scheduler']['port']}"
        cmd = [_bin("dask"), "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--name", name,
               "--local-directory", str(folder / "dask")]
        env = {"PREFECT_API_URL": self.env().get("PREFECT_API_URL", "")} if "prefect" in self.state else {}
        return cmd, folder / "worker.log", folder, env, True

    def _wait_port(self, port: int, timeout: float, what: str, log: Path) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.3)
        raise NasError(f"cluster: {what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s (log {log})")

    def stop_service(self, name: str, sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
        """Stop one service: its whole process group, SIGKILL after ``wait`` seconds."""
        if name == "postgres":
            return self.stop_postgres("immediate" if sig == signal.SIGKILL else "fast")
        spec = self.state.get(name, {})
        pid = spec.get("pid")
        if not pid or not _same_process(pid, spec.get("started")):
            return  # gone, or another process now has its number: never signalled
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        t0 = time.monotonic()
        while time.monotonic() - t0 < wait:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):  # reap it when it is our child
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    def down(self, quiet: bool = False) -> None:
        """Stop every service, the workers first and the database last."""
        for name in reversed(self.state.get("services", [])):
            self.stop_service(name)
            if not quiet:
                print(f"stopped {name}", file=sys.stderr, flush=True)
        if "postgres" in self.state and "postgres" not in self.state.get("services", []):
            self.stop_postgres("immediate")
        pg = Path(self.state.get("postgres", {}).get("data", "")).parent
        if pg.name.startswith("nas-cluster-pg-") and not pg.is_relative_to(self.root):
            shutil.rmtree(pg, ignore_errors=True)
        self.state["services"] = []
        if self.state_path.parent.is_dir():
            self._save()


def main_up(root: str, workers: int, prefect: bool, timeout: float) -> dict[str, str]:
    cluster = Cluster(root)
    return cluster.up(workers, prefect, timeout)
