"""GET a URL with a real HTTP client (urllib) and print one JSON line:
{"code": 200, "content_type": "...", "body": "..."}; with --metrics the body
is parsed by the official Prometheus client's OpenMetrics parser, and
"samples" lists every sample as [name, labels, value].
"""
import json
import sys
import urllib.error
import urllib.request

url = sys.argv[1]
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        code, content_type, body = response.status, response.headers["Content-Type"], response.read().decode()
except urllib.error.HTTPError as error:
    code, content_type, body = error.code, error.headers["Content-Type"], error.read().decode()
out = {"code": code, "content_type": content_type, "body": body}
if "--metrics" in sys.argv:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    out["samples"] = [
        [s.name, s.labels, s.value]
        for family in text_string_to_metric_families(body)
        for s in family.samples
    ]
print(json.dumps(out), flush=True)
