"""``rtopt serve`` and ``rtopt ui`` behave: stop every process, announce only when up, refuse
foreign Host headers, say in one line why they cannot start.

Real processes on loopback only: a tiny stdlib HTTP server stands in for MLflow where the
behaviour under test is ours (signals, process groups, start-up failures); then one real
``rtopt serve`` and one real ``rtopt ui`` over a temporary SQLite store with one version.
Liveness of a process group is read from ``/proc`` (no psutil).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from _evidence import LIVE_OK

from rtopt_lab.tracking.scoring import HostGuard
from rtopt_lab.tracking.server import (
    allowed_hosts,
    group_members,
    port_is_free,
    serve_command,
    start,
    stop,
    ui_command,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _get(port: int, path: str, host: str | None = None, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if host is not None:
        headers["Host"] = host
    conn.request("POST" if body is not None else "GET", path, body, headers)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def _until(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# --------------------------------------------------------------------------- command lines
def test_commands_bind_loopback_and_restrict_hosts():
    port = _free_port()
    for cmd, _ in (
        ui_command(uri="sqlite:////srv/x/mlflow.db", port=port),
        serve_command(port=port),
    ):
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
        assert cmd[cmd.index("--allowed-hosts") + 1] == f"127.0.0.1:{port},localhost:{port}"
    _, env = ui_command(uri="sqlite:////srv/x/mlflow.db", port=port)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] in (
        "false",
        os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION"),
    )


def test_server_arguments_iv():
    with pytest.raises(TypeError, match="`port`"):
        allowed_hosts("5000")
    with pytest.raises(ValueError, match="`port`"):
        serve_command(port=0)
    with pytest.raises(TypeError, match="`workers`"):
        ui_command(uri="sqlite:////srv/x/mlflow.db", workers=1.5)
    with pytest.raises(ValueError, match="`workers`"):
        serve_command(workers=0)
    with pytest.raises(TypeError, match="`allowed_hosts`"):
        HostGuard(None, "127.0.0.1:5000")
    with pytest.raises(ValueError, match="`allowed_hosts`"):
        HostGuard(None, [])
    with pytest.raises(TypeError, match="`proc`"):
        stop(os.getpid())
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    with pytest.raises(ValueError, match="`timeout_s`"):
        stop(quick, timeout_s=-1)
    quick.wait()


def test_host_guard_refuses_foreign_and_missing_hosts():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = HostGuard(app, allowed_hosts(5001))

    def call(headers):
        sent = []

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "path": "/invocations", "headers": headers}
        asyncio.run(guard(scope, None, send))
        return sent[0]["status"]

    assert call([(b"host", b"127.0.0.1:5001")]) == 200
    assert call([(b"host", b"LOCALHOST:5001")]) == 200
    assert call([(b"host", b"evil.example")]) == 403
    assert call([(b"host", b"evil.example:5001")]) == 403
    assert call([(b"host", b"127.0.0.1:5002")]) == 403
    assert call([]) == 403
    assert seen == ["/invocations", "/invocations"]


def test_port_is_free_sees_a_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_is_free(s.getsockname()[1])
    assert port_is_free(_free_port())


# --------------------------------------------------------------------------- process groups
_SPAWNER = textwrap.dedent("""
    import signal, subprocess, sys, time
    if sys.argv[1] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)" \\
        if sys.argv[1] == "stubborn" else "import time; time.sleep(120)"
    kids = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    print(" ".join(str(k.pid) for k in kids), flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("kind", ["polite", "stubborn"])
def test_stop_ends_every_process_of_the_group(kind):
    proc = start(
        ([sys.executable, "-c", _SPAWNER, kind], dict(os.environ)),
        stdout=subprocess.PIPE,
        text=True,
    )
    grandchildren = [int(p) for p in proc.stdout.readline().split()]
    assert os.getpgid(proc.pid) == proc.pid  # its own group
    assert set(group_members(proc.pid)) == {proc.pid, *grandchildren}
    t = time.monotonic()
    graceful = stop(proc, timeout_s=1.0)
    took = time.monotonic() - t
    assert graceful is (kind == "polite")  # SIGKILL only when needed
    assert group_members(proc.pid) == ()
    assert not any(_alive(p) for p in grandchildren)
    assert took < 5.0
    proc.stdout.close()


_DRIVER = textwrap.dedent("""
    # rtopt's foreground loop over stand-in servers, one round per argument, one import of it
    import socket, sys
    from rtopt_lab.tracking.server import run_foreground
    for mode in sys.argv[1:]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if mode == "dies":
            cmd = [sys.executable, "-c", "import sys; sys.stderr.write('starting\\\\nTraceback (most recent "
                   "call last):\\\\n  ...\\\\nValueError: no model in general\\\\n'); sys.exit(3)"]
        else:   # a server that spawns a helper, as mlflow ui spawns uvicorn
            cmd = [sys.executable, "-c", "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
                   "'import time; time.sleep(120)']); import http.server as h; "
                   f"h.ThreadingHTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"]
        def up():
            print(f"UP {port}", flush=True)
            if mode == "raises":
                sys.stdin.readline()    # the test has looked at the group
                raise OSError("the terminal went away")
        try:
            code = run_foreground((cmd, None), health_url=f"http://127.0.0.1:{port}/", on_up=up,
                                  timeout_s=30, stop_timeout_s=3)
            print(f"EXIT {code}", flush=True)
        except (RuntimeError, OSError) as exc:
            print(f"FAILED {exc}", flush=True)
""")


def test_run_foreground_stops_the_whole_group_on_each_signal_and_any_exit(tmp_path):
    rounds = ["SIGTERM", "SIGINT", "SIGHUP", "raises", "dies"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, *rounds],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        for mode in rounds[:4]:
            up, port = proc.stdout.readline().split()
            port = int(port)
            assert up == "UP" and _accepts(port), mode  # announced only once it answers
            kids = _children(proc.pid)
            assert len(kids) == 1, (mode, kids)
            child = kids[0]
            members = group_members(child)
            assert len(members) == 2, (mode, members)  # the server and its helper, in one group
            if mode.startswith("SIG"):
                proc.send_signal(getattr(signal, mode))
                assert proc.stdout.readline().strip() == "EXIT 0", mode
            else:
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "FAILED the terminal went away"
            assert group_members(child) == (), mode
            assert not any(_alive(p) for p in members), mode
            assert not _accepts(port), mode
        # the server that dies first: reported, never announced
        line = proc.stdout.readline().strip()
        assert line.startswith(
            "FAILED the server exited with code 3 before answering http://127.0.0.1:"
        )
        assert line.endswith(": ValueError: no model in general")  # its last line is the reason
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "starting" not in err  # held back, never shown
        assert '"GET / HTTP/1.1" 200' in err  # a live server's log is streamed
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------- real MLflow
@pytest.fixture(scope="module")
def store(tmp_path_factory, sim):
    from rtopt_lab.compliance import ProvenanceLog
    from rtopt_lab.policies import LinUCB
    from rtopt_lab.policies.learning import fit_from_log
    from rtopt_lab.tracking import default_tracking_uri, ensure_experiment, promote, register_policy

    root = tmp_path_factory.mktemp("servers")
    uri = default_tracking_uri(root)
    policy = fit_from_log(
        LinUCB(sim.catalog, seed=7), sim.simulate_log(1_500, seed=3, logging_policy="uniform")
    )
    prov = ProvenanceLog(root / "prov.jsonl")
    v = register_policy(
        policy,
        experiment_id=ensure_experiment("rtopt/servers-test", uri=uri),
        uri=uri,
        gate_verdicts={"all": {"status": "pass"}},
        tags={"ope.lower_bound": "0.01"},
        provenance=prov,
    ).version
    for to in ("shadow", "canary", "guarded", "general"):
        promote("rtopt-policy", v, to, uri=uri, provenance=prov, evidence=LIVE_OK)
    return uri, root, policy


def _rtopt(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rtopt_lab.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def _drain(stream, into: list[str]) -> threading.Thread:
    t = threading.Thread(target=lambda: into.extend(stream), daemon=True)
    t.start()
    return t


def _announced(proc: subprocess.Popen, prefix: str, timeout_s: float = 240.0) -> str:
    """Read stdout until the announcement; the caller checks the port at once, no retry."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"exited ({proc.wait()}) without announcing: {proc.stderr.read()[-2000:]}")
        if line.startswith(prefix):
            return line.strip()
    pytest.fail(f"no {prefix!r} line within {timeout_s} s")


def _served_version(port: int, body: bytes) -> tuple[str | None, list]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json", "Host": f"127.0.0.1:{port}"})
    r = conn.getresponse()
    out = r.getheader("x-rtopt-model-version"), json.loads(r.read())["predictions"]
    conn.close()
    return out


def _follows_the_alias(port, uri, root, sim, body, frame):
    """A promotion into general, then a rollback, reach the running server without a restart."""
    from rtopt_lab.policies import FixedPolicy
    from rtopt_lab.serving import select_frame
    from rtopt_lab.tracking import ensure_experiment, promote, register_policy, rollback

    assert _served_version(port, body)[0] == "1"
    prov = root / "prov.jsonl"
    v2 = register_policy(FixedPolicy(sim.catalog), experiment_id=ensure_experiment("rtopt/servers-test", uri=uri),
                         uri=uri, gate_verdicts={"all": {"status": "pass"}}, provenance=prov).version
    for to in ("shadow", "canary", "guarded", "general"):
        promote("rtopt-policy", v2, to, uri=uri, provenance=prov, evidence=LIVE_OK)
    t = time.monotonic()
    assert _until(lambda: _served_version(port, body)[0] == v2, 60), "the server never followed the alias"
    took = time.monotonic() - t
    got = _served_version(port, body)[1]
    assert [g["arm_id"] for g in got] == select_frame(FixedPolicy(sim.catalog), frame)["arm_id"].tolist()
    rollback("rtopt-policy", phase="general", uri=uri, provenance=prov, reason="p99 latency breach")
    assert _until(lambda: _served_version(port, body)[0] == "1", 60), "the rollback never reached the server"
    assert took < 30, f"{took:.1f} s to follow a move (refresh 0.5 s + one load)"


@pytest.mark.slow
def test_serve_nothing_in_the_phase_exits_1_with_one_line(store):
    uri, root, _ = store
    t = time.monotonic()
    proc = _rtopt(
        "serve", "--phase", "shadow", "--tracking-uri", uri, "--port", str(_free_port()), cwd=root
    )
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t
    assert proc.returncode == 1, err
    assert out == "" and "Traceback" not in err
    assert err.strip().splitlines() == [
        "rtopt: nothing in shadow: no version of 'rtopt-policy' holds the alias; promote one first "
        "(rtopt promote --version N --to shadow)"
    ]
    assert took < 30, f"{took:.1f} s: the alias is checked before any server starts"


@pytest.mark.slow
def test_serve_announces_when_up_guards_host_and_stops_on_sigterm(store, sim):
    from rtopt_lab.serving import FEATURE_COLUMNS, select_frame

    uri, root, policy = store
    port = _free_port()
    proc = _rtopt(
        "serve", "--phase", "general", "--tracking-uri", uri, "--port", str(port),
        "--refresh-s", "0.5", cwd=root,
    )
    errors: list[str] = []
    try:
        line = _announced(proc, "serving on")
        status, _ = _get(port, "/ping")  # answers the moment it is announced
        assert status == 200
        assert line.startswith(
            f"serving on http://127.0.0.1:{port}/invocations: rtopt-policy version 1 (general)"
        )
        _drain(proc.stderr, errors)
        _drain(proc.stdout, [])
        ctx = sim.sample_contexts(12, seed=5)
        frame = ctx[[c for c in FEATURE_COLUMNS if c in ctx.columns]].copy()
        frame["request_id"] = [f"req-{i}" for i in range(len(frame))]
        body = json.dumps(
            {"dataframe_records": json.loads(frame.to_json(orient="records"))}
        ).encode()
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}"):
            status, payload = _get(port, "/invocations", host=host, body=body)
            assert status == 403 and b"predictions" not in payload
            assert _get(port, "/ping", host=host)[0] == 403
        status, payload = _get(port, "/invocations", host=f"127.0.0.1:{port}", body=body)
        assert status == 200
        got = json.loads(payload)["predictions"]
        want = select_frame(policy, frame)
        assert [g["arm_id"] for g in got] == want["arm_id"].tolist()
        assert [g["request_id"] for g in got] == frame["request_id"].tolist()
        assert _get(port, "/ping", host=f"localhost:{port}")[0] == 200
        (child,) = _children(proc.pid)
        assert group_members(child)
        busy = _rtopt("ui", "--tracking-uri", uri, "--port", str(port), cwd=root)
        out, err = busy.communicate(timeout=120)
        assert busy.returncode == 1 and out == ""
        assert err.strip().splitlines() == [
            f"rtopt: port {port} on 127.0.0.1 is in use; choose another with --port"
        ]
        _follows_the_alias(port, uri, root, sim, body, frame)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    assert group_members(child) == ()
    assert not _accepts(port)
    assert not any("Traceback" in e for e in errors)


@pytest.mark.slow
def test_ui_announces_when_up_guards_host_and_stops_on_sigint(store):
    uri, root, _ = store
    port = _free_port()
    proc = _rtopt("ui", "--tracking-uri", uri, "--port", str(port), cwd=root)
    try:
        line = _announced(proc, "MLflow UI on")
        assert _get(port, "/")[0] == 200  # answers the moment it is announced
        assert line.startswith(f"MLflow UI on http://127.0.0.1:{port}")
        _drain(proc.stderr, [])
        _drain(proc.stdout, [])
        api = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=rtopt/servers-test"
        assert _get(port, "/", host="evil.example")[0] == 403
        assert _get(port, api, host=f"evil.example:{port}")[0] == 403
        status, payload = _get(port, api, host=f"localhost:{port}")
        assert status == 200 and json.loads(payload)["experiment"]["name"] == "rtopt/servers-test"
        (child,) = _children(proc.pid)
        members = group_members(child)
        assert len(members) >= 2  # mlflow ui and its uvicorn
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0
    assert _until(lambda: group_members(child) == (), 1.0)
    assert not any(_alive(p) for p in members)
    assert not _accepts(port)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- row by row over HTTP
def _strict_json(payload: bytes):
    """JSON as RFC 8259 has it: a bare NaN or Infinity raises."""
    def no_constant(name):
        raise ValueError(f"not JSON: bare {name}")

    return json.loads(payload, parse_constant=no_constant)


@pytest.mark.slow
def test_served_model_answers_every_record_on_its_own(store):
    """Mixed-type batches: each bad record gets its fallback and reason, the others their
    decisions (as select_frame answers them in process), and the body is strict JSON."""
    import pandas as pd

    from rtopt_lab.serving import input_example, select_frame

    uri, root, policy = store
    port = _free_port()
    proc = _rtopt("serve", "--phase", "general", "--tracking-uri", uri, "--port", str(port), cwd=root)
    try:
        _announced(proc, "serving on")
        _drain(proc.stderr, [])
        _drain(proc.stdout, [])
        good = json.loads(input_example().to_json(orient="records"))[0]
        no_tier = {k: v for k, v in good.items() if k != "risk_tier"} | {"request_id": "no-tier"}
        batches = {
            "a record lacking risk_tier": [good, no_tier],
            "lacking it first": [no_tier, good],
            "mixed types": [
                good,
                good | {"risk_tier": "high", "request_id": "tier-str"},
                good | {"prompt_tokens": "lots", "max_loc": None, "request_id": "counts"},
                good | {"risk_tier": 2.5, "request_id": "tier-float"},
                good | {"risk_tier": None, "request_id": "tier-null"},
                {"task_type": 17, "request_id": "task-int"},
                {"task_type": None},
                good | {"complexity_indicators": {"a": 1}, "request_id": "ci-dict"},
                good | {"has_external_deps": "maybe", "request_id": "deps-str"},
            ],
        }
        for what, records in batches.items():
            status, payload = _get(port, "/invocations", host=f"127.0.0.1:{port}",
                                   body=json.dumps({"dataframe_records": records}).encode())
            assert status == 200, (what, payload[:400])
            got = _strict_json(payload)["predictions"]
            assert len(got) == len(records), what
            want = select_frame(policy, pd.DataFrame(records))
            for g, w, rec in zip(got, want.to_dict("records"), records, strict=True):
                assert g["arm_id"] == w["arm_id"] and g["propensity"] == pytest.approx(w["propensity"]), (what, rec)
                assert (g["reason"] is None) == (w["reason"] is None), (what, rec, g["reason"])
                for name in ("seed", "model_name", "reason"):
                    assert g[name] is None or isinstance(g[name], (str, int)), (what, name, g[name])
            reasons = {g["request_id"]: g["reason"] for g in got}
            assert reasons.get("req-0001", None) is None, what  # the valid record: its decision
            for rid in ("tier-str", "counts", "tier-float"):
                if rid in reasons:
                    assert reasons[rid] and "baseline" in reasons[rid], (what, rid, reasons[rid])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_answers_serialise_as_strict_json_with_mixed_seeds():
    """Arms with and without a seed or model in one answer: null, never NaN or 42.0."""
    import io

    import pandas as pd
    from mlflow.pyfunc.scoring_server import predictions_to_json

    from rtopt_lab.arms import ArmCatalog, ParameterSet
    from rtopt_lab.policies import UniformRandom
    from rtopt_lab.serving import input_example, select_frame

    cat = ArmCatalog([ParameterSet(temperature=0.6, top_p=1.0, max_tokens=600),
                      ParameterSet(temperature=0.2, top_p=0.9, max_tokens=400, seed=42, model_name="gpt-4o")])
    good = json.loads(input_example().to_json(orient="records"))[0]
    records = [good | {"request_id": f"r{i}"} for i in range(12)] + [good | {"risk_tier": "x"}]
    out = select_frame(UniformRandom(cat, seed=1), pd.DataFrame(records))
    buf = io.StringIO()
    predictions_to_json(out, buf)
    got = _strict_json(buf.getvalue())["predictions"]
    assert {g["seed"] for g in got} == {None, 42} and {g["model_name"] for g in got} == {None, "gpt-4o"}
    assert all(type(g["seed"]) in (int, type(None)) for g in got)
    assert got[-1]["reason"].startswith("invalid request") and all(g["reason"] is None for g in got[:-1])
