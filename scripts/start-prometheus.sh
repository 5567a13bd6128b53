#!/usr/bin/env bash
# Start a throw-away Prometheus + Alertmanager pair on 127.0.0.1 for opsmedic's end-to-end tests and demos.
#
#   scripts/start-prometheus.sh --target 127.0.0.1:9400 --webhook http://127.0.0.1:8080/alerts/alertmanager \
#       [--prometheus-port 9090] [--alertmanager-port 9093] [--dir DIR] [--wait 30]
#   scripts/start-prometheus.sh stop DIR
#
# Prometheus scrapes the sandbox exporter (--target, `sandbox.exporter.serve`) every second and evaluates
# opsmedic's GPU / Kubernetes / model alert rules every second; Alertmanager groups the alerts for one second
# and posts them (webhook v4, resolved ones too) to --webhook. Configs, data and logs go to DIR (a new temp
# dir by default); the pids go to DIR/prometheus.pid and DIR/alertmanager.pid, for `stop DIR`.
# Alertmanager runs with `--cluster.listen-address=` (empty): no gossip port, so it never leaves loopback.
#
# Binaries: Debian's `prometheus` and `prometheus-alertmanager` (apt-get install prometheus
# prometheus-alertmanager), upstream's `alertmanager`, or PROMETHEUS_BIN / ALERTMANAGER_BIN.
# On success prints PROMETHEUS_URL=..., ALERTMANAGER_URL=... and OPSMEDIC_PROM_DIR=... and exits 0, leaving
# both servers running; exits 1 (after stopping whatever it started) when one does not become ready.
set -euo pipefail

die() { echo "start-prometheus: $*" >&2; exit "${2:-2}"; }

stop_dir() {
  local dir="$1" pid
  for name in alertmanager prometheus; do
    if [[ -f "$dir/$name.pid" ]]; then
      pid="$(cat "$dir/$name.pid")"
      # only the processes this script started, by the pid it recorded
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
      fi
      rm -f "$dir/$name.pid"
    fi
  done
}

if [[ "${1:-}" == "stop" ]]; then
  [[ -n "${2:-}" && -d "$2" ]] || die "usage: $0 stop DIR"
  stop_dir "$2"
  exit 0
fi

target="" webhook="" prom_port=9090 am_port=9093 dir="" wait_s=30
while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) target="$2"; shift 2 ;;
    --webhook) webhook="$2"; shift 2 ;;
    --prometheus-port) prom_port="$2"; shift 2 ;;
    --alertmanager-port) am_port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --wait) wait_s="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ -n "$target" ]] || die "--target HOST:PORT (the sandbox exporter) is required"
[[ -n "$webhook" ]] || die "--webhook URL (opsmedic's Alertmanager receiver) is required"
[[ "$target" == 127.0.0.1:* || "$target" == localhost:* ]] || die "--target must be on 127.0.0.1"

prometheus_bin="${PROMETHEUS_BIN:-$(command -v prometheus || true)}"
alertmanager_bin="${ALERTMANAGER_BIN:-$(command -v prometheus-alertmanager || command -v alertmanager || true)}"
[[ -x "$prometheus_bin" ]] || die "prometheus not found (apt-get install prometheus, or set PROMETHEUS_BIN)" 3
[[ -x "$alertmanager_bin" ]] || die "alertmanager not found (apt-get install prometheus-alertmanager)" 3

dir="${dir:-$(mktemp -d -t opsmedic-prom.XXXXXX)}"
mkdir -p "$dir/prometheus-data" "$dir/alertmanager-data"

cat >"$dir/alertmanager.yml" <<EOF
route:
  receiver: opsmedic
  group_by: [alertname, Hostname, gpu, node, pod, model]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: opsmedic
    webhook_configs:
      - url: "$webhook"
        send_resolved: true
EOF

cat >"$dir/rules.yml" <<'EOF'
groups:
  - name: opsmedic-gpu
    interval: 1s
    rules:
      - alert: GpuXid
        expr: DCGM_FI_DEV_XID_ERRORS > 0
        labels: {severity: critical}
        annotations:
          summary: "XID {{ $value }} on {{ $labels.Hostname }}/gpu-{{ $labels.gpu }}"
          value: "{{ $value }}"
      - alert: GpuTempHigh
        expr: DCGM_FI_DEV_GPU_TEMP > 85
        for: 1m
        labels: {severity: warning}
        annotations:
          summary: "{{ $labels.Hostname }}/gpu-{{ $labels.gpu }} at {{ $value }} C for 1m"
          value: "{{ $value }}"
      - alert: GpuEccDbe
        expr: DCGM_FI_DEV_ECC_DBE_VOL_TOTAL > 0
        labels: {severity: critical}
        annotations: {summary: "uncorrectable ECC errors on {{ $labels.Hostname }}/gpu-{{ $labels.gpu }}"}
      - alert: GpuRowRemapFailure
        expr: DCGM_FI_DEV_ROW_REMAP_FAILURE > 0
        labels: {severity: critical}
        annotations: {summary: "row remapping failed on {{ $labels.Hostname }}/gpu-{{ $labels.gpu }}"}
      - alert: GpuNvlinkErrors
        expr: rate(DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL[2m]) * 60 > 10
        for: 1m
        labels: {severity: warning}
        annotations: {summary: "NVLink CRC errors climbing on {{ $labels.Hostname }}/gpu-{{ $labels.gpu }}"}
      - alert: NodeGpuMissing
        # fewer GPUs readable by DCGM than the node's capacity: one has fallen off the bus
        expr: >
          count by (Hostname) (DCGM_FI_DEV_GPU_TEMP)
          < on (Hostname) max by (Hostname) (
            label_replace(kube_node_status_capacity{resource="nvidia_com_gpu"}, "Hostname", "$1", "node", "(.*)"))
        labels: {severity: critical, opsmedic_signal: gpu_lost}
        annotations: {summary: "{{ $labels.Hostname }} has lost a GPU"}
  - name: opsmedic-kube
    interval: 1s
    rules:
      - alert: KubeNodeNotReady
        expr: kube_node_status_condition{condition="Ready",status="true"} == 0
        for: 30s
        labels: {severity: critical}
        annotations: {summary: "{{ $labels.node }} is NotReady"}
      - alert: KubePodCrashLooping
        expr: max_over_time(kube_pod_container_status_waiting_reason{reason="CrashLoopBackOff"}[1m]) >= 1
        labels: {severity: warning}
        annotations: {summary: "{{ $labels.pod }} is crash-looping"}
  - name: opsmedic-models
    interval: 1s
    rules:
      - alert: ModelAccuracyLow
        expr: model_accuracy < on (model) model_slo_accuracy_min
        for: 2m
        labels: {severity: warning}
        annotations: {summary: "{{ $labels.model }} accuracy {{ $value }} below its SLO", value: "{{ $value }}"}
      - alert: ModelLatencyHigh
        expr: model_latency_p95_ms > on (model) model_slo_latency_p95_ms
        for: 2m
        labels: {severity: warning}
        annotations: {summary: "{{ $labels.model }} p95 latency {{ $value }} ms above its SLO", value: "{{ $value }}"}
      - alert: ModelDriftPsi
        expr: model_feature_psi > 0.2
        for: 5m
        labels: {severity: warning}
        annotations: {summary: "{{ $labels.model }} feature {{ $labels.feature }} PSI {{ $value }}", value: "{{ $value }}"}
EOF

cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ["$dir/rules.yml"]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:$am_port"]
scrape_configs:
  - job_name: sandbox
    honor_labels: true
    static_configs:
      - targets: ["$target"]
EOF

"$prometheus_bin" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$dir/prometheus.log" 2>&1 &
echo $! >"$dir/prometheus.pid"
"$alertmanager_bin" --config.file="$dir/alertmanager.yml" --storage.path="$dir/alertmanager-data" \
  --web.listen-address="127.0.0.1:$am_port" --cluster.listen-address= >"$dir/alertmanager.log" 2>&1 &
echo $! >"$dir/alertmanager.pid"

ready() { # $1 url: curl if present, else python
  if command -v curl >/dev/null; then curl -fs -o /dev/null --max-time 1 "$1" 2>/dev/null
  else python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; fi
}
deadline=$((SECONDS + wait_s))
for url in "http://127.0.0.1:$prom_port/-/ready" "http://127.0.0.1:$am_port/-/ready"; do
  until ready "$url"; do
    if (( SECONDS >= deadline )); then
      echo "start-prometheus: $url not ready after ${wait_s}s; logs in $dir" >&2
      tail -n 20 "$dir/prometheus.log" "$dir/alertmanager.log" >&2 || true
      stop_dir "$dir"
      exit 1
    fi
    sleep 0.2
  done
done
echo "PROMETHEUS_URL=http://127.0.0.1:$prom_port"
echo "ALERTMANAGER_URL=http://127.0.0.1:$am_port"
echo "OPSMEDIC_PROM_DIR=$dir"
