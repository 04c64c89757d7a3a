"""Runs mortar-estimate, mortar-morph --verify and mortar-sweep on the real models.

Reads what scripts/export_real_models.py wrote (.cache/models/saved/NAME and
.cache/data/real/NAME.npz), writes each tool's output under out/real/NAME and a
markdown table of what each run read, morphed, measured, and its wall time and
peak memory (/usr/bin/time) to out/real/real_models.md, and prints the table.

Usage: .venv/bin/python scripts/run_real_models.py [NAME ...]
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".venv", "bin")
OUT = os.path.join(ROOT, "out", "real")
PRECISION = 0.1
VERIFY_MAX_REL = 0.5  # the drift is the model's own; the sweep says what it costs

# name: (description, metric, scored output, input shape for dynamic dims, inputs verified)
MODELS = {
    "fer": ("FER mini-Xception, lfw_subset faces", "agreement", None, None),
    "basic_pitch": ("basic-pitch, synthesised melodies", "psnr", "note", None),
    "mtcnn_onet": ("MTCNN ONet, lfw_subset faces", "psnr", "output_1", None),
    "mtcnn_pnet": ("MTCNN PNet, 96x96 photo crops", "psnr", "output_1", "1,96,96,3"),
    "hed": ("HED (VGG16), 96x96 photo crops", "psnr", None, "1,96,96,3"),
    "crepe_tiny": ("CREPE tiny, synthesised tones", "agreement", None, None),
}


def _timed(name, step, argv):
  """Runs argv under /usr/bin/time; returns (exit status, seconds, peak MiB, output)."""
  stats = os.path.join(OUT, name, step + ".time")
  proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", stats] + argv,
                        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  with open(os.path.join(OUT, name, step + ".log"), "w") as f:
    f.write(proc.stdout + proc.stderr)
  with open(stats) as f:
    seconds, kib = f.read().split()[-2:]
  return proc.returncode, float(seconds), int(kib) / 1024, proc.stdout + proc.stderr


def _input_name(saved):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  signature = tf.saved_model.load(saved).signatures["serving_default"]
  (name,) = signature.structured_input_signature[1]
  return name


def run(name):
  description, metric, output, input_shape = MODELS[name]
  saved = os.path.join(ROOT, ".cache", "models", "saved", name)
  data = os.path.join(ROOT, ".cache", "data", "real", name + ".npz")
  work = os.path.join(OUT, name)
  shutil.rmtree(work, ignore_errors=True)
  os.makedirs(work)
  x = np.load(data)["x"]
  verify_inputs = os.path.join(work, "verify.npz")
  np.savez(verify_inputs, **{_input_name(saved): x[:8]})
  shape = [f"--input_shape={input_shape}"] if input_shape else []
  row = {"model": name, "description": description, "samples": len(x), "metric": metric}

  rc, secs, mib, log = _timed(name, "estimate", [
      f"{BIN}/mortar-estimate", f"--saved_model={saved}", f"--precision={PRECISION}",
      f"--json={work}/estimate.json", f"--csv={work}/estimate.csv"] + shape)
  row["estimate"] = (rc, secs, mib)
  if rc == 0:
    estimate = json.load(open(f"{work}/estimate.json"))
    layers = estimate["layers"]
    row["read"] = sum(1 for layer in layers if not layer["unmapped"])
    row["unmapped"] = sum(1 for layer in layers if layer["unmapped"])
    row["mortar_x"] = estimate["headline"]["over_stripes"]

  rc, secs, mib, log = _timed(name, "morph", [
      f"{BIN}/mortar-morph", f"--input={saved}", f"--output={work}/morphed",
      f"--precision={PRECISION}", "--verify", f"--verify_inputs={verify_inputs}",
      f"--verify_max_rel={VERIFY_MAX_REL}", f"--report={work}/morph.json", "--noprogress"] + shape)
  row["morph"] = (rc, secs, mib)
  if rc == 0:
    report = json.load(open(f"{work}/morph.json"))
    row["morphed"] = sum(1 for v in report["variables"] if v["twin_of"] is None)
    row["aligned_x"] = report["ratio"]["aligned"]
    row["drift"] = max(o["max_rel"] for o in report["verification"]["outputs"].values())

  rc, secs, mib, log = _timed(name, "sweep", [
      f"{BIN}/mortar-sweep", f"--model={saved}", f"--data={data}", f"--metric={metric}",
      f"--out_dir={work}/sweep", "--noprogress", "--methods=paper,fewest_ones",
      "--precisions=0.01,0.1,0.3"] + ([f"--output={output}"] if output else []))
  row["sweep"] = (rc, secs, mib)
  if rc == 0:
    sweep = json.load(open(f"{work}/sweep/sweep.json"))
    row["sweep_json"] = sweep
  return row


def _cell(step):
  rc, secs, mib = step
  status = "ok" if rc == 0 else f"exit {rc}"
  return f"{status}, {secs:.0f} s, {mib:.0f} MiB"


def table(rows):
  lines = ["| model | data | estimate: ops read / unmapped, mortar x stripes | estimate | "
           "morph P=0.1: kernels, aligned ones ratio, max rel drift | morph --verify | sweep | ",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    est = (f"{r['read']} / {r['unmapped']}, {r['mortar_x']:.3f}x" if "read" in r else "-")
    mor = (f"{r['morphed']}, {r['aligned_x']:.2f}x, {r['drift']:.3f}" if "morphed" in r
           else "-")
    lines.append(f"| {r['model']} | {r['description']} ({r['samples']}, {r['metric']}) | {est} | "
                 f"{_cell(r['estimate'])} | {mor} | {_cell(r['morph'])} | {_cell(r['sweep'])} |")
  return "\n".join(lines)


def main(names):
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    sys.exit(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
  os.makedirs(OUT, exist_ok=True)
  rows = []
  for name in names or MODELS:
    print(f"running {name}", flush=True)
    rows.append(run(name))
  text = table(rows)
  with open(os.path.join(OUT, "real_models.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(OUT, "real_models.json"), "w") as f:
    json.dump([{k: v for k, v in r.items() if k != "sweep_json"} for r in rows], f, indent=1)
  print(text)
  return 0 if all(r[s][0] == 0 for r in rows for s in ("estimate", "morph", "sweep")) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
