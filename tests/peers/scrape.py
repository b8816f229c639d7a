"""GET a URL with a real HTTP client (urllib) and print one JSON line:
{"code": 200, "content_type": "...", "body": "..."}. With --metrics the
request asks for OpenMetrics (as Prometheus does) and the body is parsed by
the official Prometheus client's OpenMetrics parser; with --text it asks for
the Prometheus text format 0.0.4 and the body goes through that format's
parser. Either way "samples" lists every sample as [name, labels, value].
"""
import json
import sys
import urllib.error
import urllib.request

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
TEXT = "text/plain;version=0.0.4"

url = sys.argv[1]
headers = {}
if "--metrics" in sys.argv:
    headers["Accept"] = OPENMETRICS
elif "--text" in sys.argv:
    headers["Accept"] = TEXT
request = urllib.request.Request(url, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        code, content_type, body = response.status, response.headers["Content-Type"], response.read().decode()
except urllib.error.HTTPError as error:
    code, content_type, body = error.code, error.headers["Content-Type"], error.read().decode()
out = {"code": code, "content_type": content_type, "body": body}
if "--metrics" in sys.argv:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
elif "--text" in sys.argv:
    from prometheus_client.parser import text_string_to_metric_families
if "--metrics" in sys.argv or "--text" in sys.argv:
    out["samples"] = [
        [s.name, s.labels, s.value]
        for family in text_string_to_metric_families(body)
        for s in family.samples
    ]
print(json.dumps(out), flush=True)
