#!/usr/bin/env python3
"""Clients for the export benchmark (bench/export.sh). Python 3 stdlib only.

  export-client.py baseline --base URL --group ID --types T1,T2 [--batch 50] [--concurrency 2]
                   [--max-batches K]
      The upstream baseline: the searches fhirwall's export runs, sent straight
      to an upstream FHIR base. The Group is read from the upstream and its
      members taken in order as fhirwall plans them (entries not `inactive`
      whose period covers today, `Patient/{id}` references); they are cut into
      batches of --batch; per batch, one search per type,
      `T?{link}=Patient/a,Patient/b,...&_count=250` (`Patient?_id=a,b,...`),
      where {link} is the type's `narrow` parameter in
      policies/patient-compartment.json (what fhirwall uses: Coverage
      `beneficiary`, Observation `subject`, ...), following `next` links;
      within a batch --concurrency searches at a time, the next batch once the
      batch is done (fhirwall's runner does the same). Keep-alive
      connections, one per thread; `Prefer: handling=strict` as fhirwall
      sends. Pages are not parsed as JSON: entries are counted by their
      `"fullUrl"` members and the `next` link found by a pattern (both checked
      against a full JSON parse on the first page of every type). Prints
      {resources, seconds, resources_per_s, requests, bytes, batches, ...}.
      --max-batches K stops after K batches (a probe of a slow upstream).

  export-client.py fhirwall --base URL --token-file F --group ID --types T1,T2
                   [--pid PID] [--audit-dir DIR] [--no-download] [--repeat]
      A fhirwall export end to end: kick-off (`Prefer: respond-async`, bearer
      token), status polled honouring Retry-After (never sooner, so never
      429 by our fault), then every manifest file downloaded and its lines
      counted. Prints {resources, seconds, resources_per_s, files, bytes, ...}
      where seconds runs from the kick-off to the manifest seen by the
      client (includes up to one Retry-After of polling delay); with
      --audit-dir also job_seconds (kick-off sent to the job's
      `export-complete` audit record, the server-side job time) and
      job_resources_per_s. With --pid, that process's VmRSS is sampled every
      0.5 s while the job runs and its VmHWM read at the end (MB). With
      --repeat: exports back to back without downloads, one JSON line each,
      until killed (load for the on-demand latency measurement).

  export-client.py kickoff --base URL --token-file F --group ID --types T1,T2
      Prints the status URL.

  export-client.py watch --status URL --token-file F [--until-progress N] [--timeout S]
      Polls a status URL (honouring Retry-After). With --until-progress N:
      returns once X-Progress shows at least N patients done (or the job is
      done). Otherwise until the manifest; then prints first_move_s (first
      poll whose progress is above the first progress seen) and done_s,
      seconds since --t0 (a Unix time, default now). With --audit-dir and
      --job, also the audit times of the first export-batch record after
      --t0 and of export-complete.
"""

import argparse
import concurrent.futures
import datetime
import glob
import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
COMPARTMENT = os.path.join(HERE, "..", "policies", "patient-compartment.json")
UPSTREAM_PAGE = "250"  # gateway/src/ops/export/runner.rs UPSTREAM_PAGE
MAX_GET_QUERY = 4096  # gateway/src/server/pipeline.rs: longer searches are POST _search

NEXT_LINK = re.compile(rb'\{[^{}]*"relation"\s*:\s*"next"[^{}]*\}')
URL_MEMBER = re.compile(rb'"url"\s*:\s*"([^"]*)"')
FULL_URL = re.compile(rb'"fullUrl"\s*:')
NON_MATCH = re.compile(rb'"mode"\s*:\s*"(?:include|outcome)"')


def die(msg):
    print("export-client: " + msg, file=sys.stderr)
    sys.exit(1)


class Http:
    """One keep-alive connection per thread and origin."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.local = threading.local()

    def _conn(self, scheme, netloc):
        conns = getattr(self.local, "conns", None)
        if conns is None:
            conns = self.local.conns = {}
        key = (scheme, netloc)
        if key not in conns:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conns[key] = cls(netloc, timeout=self.timeout)
        return conns[key]

    def request(self, method, url, headers=None, body=None, stream=None):
        """-> (status, headers dict lower-case, body bytes | None when streamed)."""
        u = urllib.parse.urlsplit(url)
        path = u.path + ("?" + u.query if u.query else "")
        for attempt in (1, 2):
            conn = self._conn(u.scheme, u.netloc)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if stream is not None:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        stream(chunk)
                    data = None
                else:
                    data = resp.read()
                if hdrs.get("connection", "").lower() == "close":
                    conn.close()
                    self.local.conns.pop((u.scheme, u.netloc), None)
                return resp.status, hdrs, data
            except (http.client.HTTPException, ConnectionError, OSError):
                conn.close()
                self.local.conns.pop((u.scheme, u.netloc), None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def today_utc():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def period_covers(period, today):
    if period is None:
        return True
    start, end = period.get("start"), period.get("end")
    if start and start[:10] > today[: len(start[:10])]:
        return False
    if end and end[:10] < today[: len(end[:10])]:
        return False
    return True


def group_members(client, base, group_id, timeout):
    status, _, body = client.request("GET", "%s/Group/%s" % (base, group_id), {"Accept": "application/fhir+json"})
    if status != 200:
        die("GET Group/%s answered %d: %s" % (group_id, status, body[:300]))
    group = json.loads(body)
    today = today_utc()
    out = []
    if group.get("active") is False:
        return out
    for m in group.get("member") or []:
        if m.get("inactive") is True or not period_covers(m.get("period"), today):
            continue
        ref = ((m.get("entity") or {}).get("reference") or "")
        if ref.startswith("Patient/"):
            out.append(ref[len("Patient/"):])
    return out


def export_links(types):
    with open(COMPARTMENT, encoding="utf-8") as f:
        resources = json.load(f)["resources"]
    links = {}
    for t in types:
        if t == "Patient":
            links[t] = "_id"
        else:
            link = (resources.get(t) or {}).get("narrow")
            if not link:
                die("%s is not exportable (no narrow parameter in %s)" % (t, COMPARTMENT))
            links[t] = link
    return links


def quote(v):
    return urllib.parse.quote(v, safe="")


def scan_page(body):
    """-> (matches, next url or None) without parsing the JSON."""
    entries = len(FULL_URL.findall(body)) - len(NON_MATCH.findall(body))
    nxt = None
    m = NEXT_LINK.search(body)
    if m:
        u = URL_MEMBER.search(m.group(0))
        if u:
            nxt = json.loads(b'"' + u.group(1) + b'"')
    return entries, nxt


def parse_page(body):
    bundle = json.loads(body)
    if bundle.get("resourceType") != "Bundle":
        raise ValueError("not a Bundle")
    entries = sum(1 for e in bundle.get("entry") or [] if (e.get("search") or {}).get("mode", "match") == "match")
    nxt = next((l.get("url") for l in bundle.get("link") or [] if l.get("relation") == "next"), None)
    return entries, nxt


def cmd_baseline(args):
    client = Http(args.timeout)
    base = args.base.rstrip("/")
    types = [t for t in args.types.split(",") if t]
    links = export_links(types)
    t_plan = time.monotonic()
    members = group_members(client, base, args.group, args.timeout)
    plan_s = time.monotonic() - t_plan
    if not members:
        die("Group/%s has no active Patient members" % args.group)
    batches = [members[i:i + args.batch] for i in range(0, len(members), args.batch)]
    all_batches = len(batches)
    if args.max_batches:
        batches = batches[:args.max_batches]
    checked = set()
    lock = threading.Lock()
    stats = {"resources": 0, "requests": 0, "bytes": 0, "posts": 0}
    per_type = {t: 0 for t in types}
    headers = {"Accept": "application/fhir+json", "Prefer": "handling=strict"}
    deadline = time.monotonic() + args.timeout

    def search(resource_type, batch):
        link = links[resource_type]
        values = batch if link == "_id" else ["Patient/" + p for p in batch]
        query = "%s=%s&_count=%s" % (quote(link), ",".join(quote(v) for v in values), UPSTREAM_PAGE)
        path = "%s?%s" % (resource_type, query)
        if len(path) > MAX_GET_QUERY:
            method, url, body = "POST", "%s/%s/_search" % (base, resource_type), query.encode()
            hdrs = dict(headers, **{"Content-Type": "application/x-www-form-urlencoded"})
        else:
            method, url, body, hdrs = "GET", "%s/%s" % (base, path), None, headers
        count = requests = size = 0
        seen = set()
        while url:
            if time.monotonic() > deadline:
                raise TimeoutError("baseline: over --timeout %s s" % args.timeout)
            if url in seen:
                raise RuntimeError("paging loops at %s" % url)
            seen.add(url)
            status, _, page = client.request(method, url, hdrs, body)
            requests += 1
            size += len(page)
            if status != 200:
                raise RuntimeError("%s %s answered %d: %s" % (method, url, status, page[:300]))
            entries, nxt = scan_page(page)
            with lock:
                first = resource_type not in checked
                checked.add(resource_type)
            if first:
                full = parse_page(page)
                if full != (entries, nxt):
                    raise RuntimeError("page scan %r disagrees with the JSON parse %r on %s" % ((entries, nxt), full, url))
            count += entries
            url, method, body, hdrs = nxt, "GET", None, headers
        with lock:
            stats["resources"] += count
            stats["requests"] += requests
            stats["bytes"] += size
            stats["posts"] += 1 if len(path) > MAX_GET_QUERY else 0
            per_type[resource_type] += count

    cpu0 = time.process_time()
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for batch in batches:
            futures = [pool.submit(search, t, batch) for t in types]
            for f in futures:
                f.result()
    seconds = time.monotonic() - t0
    out = {
        "mode": "baseline",
        "base": base,
        "patients": len(members),
        "batches": len(batches),
        "all_batches": all_batches,
        "batch_patients": args.batch,
        "concurrency": args.concurrency,
        "types": types,
        "resources": stats["resources"],
        "per_type": per_type,
        "requests": stats["requests"],
        "post_searches": stats["posts"],
        "bytes": stats["bytes"],
        "seconds": round(seconds, 3),
        "resources_per_s": round(stats["resources"] / seconds, 1),
        "plan_seconds": round(plan_s, 3),
        "client_cpu_s": round(time.process_time() - cpu0, 2),
    }
    print(json.dumps(out))


def read_token(args):
    with open(args.token_file, encoding="utf-8") as f:
        return f.read().strip()


def kickoff(client, args, token):
    url = "%s/Group/%s/$export?_type=%s" % (args.base.rstrip("/"), args.group, args.types)
    headers = {"Authorization": "Bearer " + token, "Prefer": "respond-async", "Accept": "application/fhir+json"}
    status, hdrs, body = client.request("GET", url, headers)
    if status != 202 or "content-location" not in hdrs:
        die("kick-off %s answered %d %s: %s" % (url, status, hdrs, body[:500]))
    return hdrs["content-location"]


def progress_of(hdrs):
    m = re.match(r"patients (\d+)/(\d+)", hdrs.get("x-progress", ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


class Poller:
    """Polls a status URL no sooner than the last Retry-After allows."""

    def __init__(self, client, status_url, token):
        self.client, self.url, self.token = client, status_url, token
        self.not_before = 0.0
        self.polls = self.throttled = 0

    def poll(self):
        wait = self.not_before - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        status, hdrs, body = self.client.request("GET", self.url, {"Authorization": "Bearer " + self.token})
        self.polls += 1
        if status in (202, 429):
            if status == 429:
                self.throttled += 1
            retry = float(hdrs.get("retry-after", "1"))
            self.not_before = time.monotonic() + retry + 0.01
            return status, hdrs, None
        if status == 200:
            return status, hdrs, json.loads(body)
        die("status %s answered %d: %s" % (self.url, status, body[:500]))


class RssSampler(threading.Thread):
    def __init__(self, pid, every=0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples = []  # (t, kB)
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def read(self, key):
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def run(self):
        while not self.stop.is_set():
            kb = self.read("VmRSS")
            if kb is not None:
                self.samples.append((time.monotonic() - self.t0, kb))
            self.stop.wait(self.every)

    def report(self):
        mb = lambda kb: round(kb / 1024, 1)
        out = {}
        if self.samples:
            vals = [kb for _, kb in self.samples]
            n = len(vals)
            out = {"rss_samples": n, "rss_start_mb": mb(vals[0]), "rss_max_mb": mb(max(vals)),
                   "rss_end_mb": mb(vals[-1]),
                   "rss_quartiles_mb": [mb(vals[min(n - 1, int(q * (n - 1)))]) for q in (0.25, 0.5, 0.75, 1.0)]}
        hwm = self.read("VmHWM")
        if hwm is not None:
            out["hwm_mb"] = mb(hwm)
        return out


def audit_times(audit_dir, job, since_unix=None):
    """(first export-batch recorded after since_unix, export-complete recorded) for job, Unix seconds."""
    first_batch = complete = None
    needle = job.encode()
    for path in sorted(glob.glob(os.path.join(audit_dir, "*.ndjson"))):
        with open(path, "rb") as f:
            for line in f:
                if needle not in line or (b"export-batch" not in line and b"export-complete" not in line):
                    continue
                event = json.loads(line).get("event", {})
                text = json.dumps(event.get("subtype", [])) + json.dumps(event.get("type", {}))
                when = datetime.datetime.fromisoformat(event["recorded"].replace("Z", "+00:00")).timestamp()
                if "export-complete" in text:
                    complete = when
                elif "export-batch" in text and (since_unix is None or when >= since_unix):
                    if first_batch is None or when < first_batch:
                        first_batch = when
    return first_batch, complete


def download(client, manifest, token):
    files = lines = size = 0
    per_type = {}
    for item in manifest.get("output", []):
        counter = {"lines": 0, "bytes": 0}

        def sink(chunk, c=counter):
            c["lines"] += chunk.count(b"\n")
            c["bytes"] += len(chunk)

        status, _, _ = client.request("GET", item["url"], {"Authorization": "Bearer " + token}, stream=sink)
        if status != 200:
            die("download %s answered %d" % (item["url"], status))
        if counter["lines"] != item.get("count"):
            die("%s: %d lines, the manifest says %s" % (item["url"], counter["lines"], item.get("count")))
        files += 1
        lines += counter["lines"]
        size += counter["bytes"]
        per_type[item["type"]] = per_type.get(item["type"], 0) + counter["lines"]
    return files, lines, size, per_type


def cmd_fhirwall(args):
    if args.repeat:
        # A load generator: exports back to back (no download) until killed.
        args.repeat = False
        args.no_download = True
        while True:
            cmd_fhirwall(args)
            sys.stdout.flush()
    client = Http(args.timeout)
    token = read_token(args)
    sampler = RssSampler(args.pid) if args.pid else None
    if sampler:
        sampler.start()
    t_wall = time.time()
    t0 = time.monotonic()
    status_url = kickoff(client, args, token)
    job = status_url.rstrip("/").rsplit("/", 1)[-1]
    poller = Poller(client, status_url, token)
    deadline = t0 + args.timeout
    manifest = None
    last_progress = None
    while manifest is None:
        if time.monotonic() > deadline:
            die("the export %s did not finish within %s s (last X-Progress %s)" % (job, args.timeout, last_progress))
        status, hdrs, manifest = poller.poll()
        last_progress = hdrs.get("x-progress", last_progress)
    seconds = time.monotonic() - t0
    if sampler:
        sampler.stop.set()
        sampler.join()
    out = {"mode": "fhirwall", "job": job, "types": args.types.split(","), "seconds": round(seconds, 3),
           "polls": poller.polls, "throttled_polls": poller.throttled,
           "manifest_files": len(manifest.get("output", [])),
           "manifest_resources": sum(o.get("count", 0) for o in manifest.get("output", [])),
           "errors": len(manifest.get("error", []))}
    if args.audit_dir:
        _, complete = audit_times(args.audit_dir, job)
        if complete:
            out["job_seconds"] = round(complete - t_wall, 3)
            out["job_resources_per_s"] = round(out["manifest_resources"] / out["job_seconds"], 1)
    if sampler:
        out.update(sampler.report())
    if not args.no_download:
        t1 = time.monotonic()
        files, lines, size, per_type = download(client, manifest, token)
        out.update({"files": files, "resources": lines, "bytes": size, "per_type": per_type,
                    "download_seconds": round(time.monotonic() - t1, 3)})
    else:
        out["resources"] = out["manifest_resources"]
    out["resources_per_s"] = round(out["resources"] / seconds, 1)
    print(json.dumps(out))


def cmd_kickoff(args):
    client = Http(args.timeout)
    print(kickoff(client, args, read_token(args)))


def cmd_watch(args):
    client = Http(args.timeout)
    token = read_token(args)
    t0 = args.t0 if args.t0 is not None else time.time()
    poller = Poller(client, args.status, token)
    deadline = time.monotonic() + args.timeout
    first = None
    first_move = None
    out = {}
    while True:
        if time.monotonic() > deadline:
            die("watch: no %s within %s s" % ("progress" if args.until_progress else "manifest", args.timeout))
        status, hdrs, manifest = poller.poll()
        now = time.time() - t0
        p = progress_of(hdrs)
        if status == 200:
            out.update({"state": "done", "done_s": round(now, 3),
                        "manifest_resources": sum(o.get("count", 0) for o in manifest.get("output", [])),
                        "errors": len(manifest.get("error", []))})
            break
        if p is None:
            continue
        if args.until_progress is not None and p[0] >= args.until_progress:
            out.update({"state": "running", "done": p[0], "total": p[1], "at_s": round(now, 3)})
            break
        if first is None:
            first = p[0]
            out["first_progress"] = "%d/%d" % p
            out["first_poll_s"] = round(now, 3)
        elif first_move is None and p[0] > first:
            first_move = now
            out["first_move_s"] = round(now, 3)
            out["moved_to"] = "%d/%d" % p
    out["polls"] = poller.polls
    out["throttled_polls"] = poller.throttled
    if args.audit_dir and args.job:
        batch, complete = audit_times(args.audit_dir, args.job, since_unix=t0)
        if batch:
            out["audit_first_batch_s"] = round(batch - t0, 3)
        if complete:
            out["audit_done_s"] = round(complete - t0, 3)
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description="Export benchmark clients (see the module docstring).")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, fhirwall=True):
        p.add_argument("--timeout", type=float, default=1800, help="seconds for the whole step")
        if fhirwall:
            p.add_argument("--token-file", required=True)

    p = sub.add_parser("baseline")
    p.add_argument("--base", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--types", required=True)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--max-batches", type=int, help="stop after this many batches (a probe)")
    common(p, fhirwall=False)
    p.set_defaults(fn=cmd_baseline)

    p = sub.add_parser("fhirwall")
    p.add_argument("--base", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--types", required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--audit-dir")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--repeat", action="store_true", help="run exports back to back until killed (no download)")
    common(p)
    p.set_defaults(fn=cmd_fhirwall)

    p = sub.add_parser("kickoff")
    p.add_argument("--base", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--types", required=True)
    common(p)
    p.set_defaults(fn=cmd_kickoff)

    p = sub.add_parser("watch")
    p.add_argument("--status", required=True)
    p.add_argument("--until-progress", type=int)
    p.add_argument("--t0", type=float)
    p.add_argument("--audit-dir")
    p.add_argument("--job")
    common(p)
    p.set_defaults(fn=cmd_watch)

    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
