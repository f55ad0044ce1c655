# Sourced by the performance scripts (perf-baseline.sh, perf-compare.sh):
# nginx as the reference cache for `bazel-cache bench` over HTTP, run as its
# own configuration from a temporary directory on an ephemeral port of
# 127.0.0.1: GET /cas/<hash> served with sendfile, PUT stored by the DAV
# module, `worker_processes auto`, no access log. Nothing outside the
# directory is touched.
#
#   start_nginx DIR   starts it; sets NGINX_PID (the master; its workers are
#                     its children) and NGINX_URL; exits 2 with the error
#                     log when it does not come up
#   stop_nginx        stops it (safe to call when it never started)
#
# NGINX names the binary (default nginx); it needs the DAV module (Debian's
# nginx package has it).

NGINX_PID=""
NGINX_URL=""

# A port of 127.0.0.1 free when asked.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

start_nginx() {
  local dir=$1 nginx=${NGINX:-nginx} port user_line=""
  port=$(free_port)
  mkdir -p "$dir/root/cas" "$dir/tmp"
  # As root, workers would run as nobody and could not write the PUT bodies.
  [ "$(id -u)" -eq 0 ] && user_line="user root;"
  cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_max_body_size 0;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  types { }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$port;
    root $dir/root;
    location /cas/ { dav_methods PUT; dav_access user:rw; }
  }
}
EOF
  "$nginx" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' 2>>"$dir/error.log" &
  NGINX_PID=$!
  local _
  for _ in $(seq 100); do
    if ! kill -0 "$NGINX_PID" 2>/dev/null; then
      echo "nginx did not start:" >&2
      cat "$dir/error.log" >&2
      NGINX_PID=""
      exit 2
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      NGINX_URL="http://127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  echo "nginx did not listen on 127.0.0.1:$port within 10 s:" >&2
  cat "$dir/error.log" >&2
  exit 2
}

stop_nginx() {
  if [ -n "$NGINX_PID" ]; then
    kill "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
  fi
}
