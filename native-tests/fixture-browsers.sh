# Fixture for browser tests: an X server, a TLS server that demands a client certificate, NSS
# databases with PKCS#11 modules added, and Chromium / Firefox ESR driven through them
# (hosts/browserdrive.py). Source it after lib.sh and fixture-clients.sh; everything it starts is
# stopped at exit (FIXTURE_PIDS, fixture_on_exit).
# shellcheck shell=bash

BROWSERDRIVE=$(readlink -f "$(dirname "${BASH_SOURCE[0]}")/hosts/browserdrive.py")

# browsers_require: fails unless the browsers and their tools are installed.
browsers_require() {
  local tool
  for tool in /usr/bin/chromium /usr/bin/chromedriver /usr/bin/firefox-esr /usr/bin/Xvfb /usr/bin/xdotool /usr/sbin/nginx; do
    [ -x "$tool" ] || fail "no $tool (packages chromium, chromium-driver, firefox-esr, xvfb, xdotool, nginx; ./build.sh installs them)"
  done
}

# browsers_start_xvfb: an X server on a free display (Xvfb picks it); exports DISPLAY.
browsers_start_xvfb() {
  local fifo="$FIXTURE_DIR/xvfb-display" number
  mkfifo "$fifo"
  timeout 600 Xvfb -displayfd 9 -screen 0 1280x1024x24 -nolisten tcp 9>"$fifo" >"$FIXTURE_DIR/xvfb.log" 2>&1 &
  FIXTURE_PIDS+=($!)
  read -r -t 30 number <"$fifo" || fail "Xvfb did not report its display: $(tail -3 "$FIXTURE_DIR/xvfb.log")"
  export DISPLAY=":$number"
}

# browsers_tls_site NAME CA_FILE: an nginx TLS site (server.pem from the test CA) that demands a
# client certificate issued by CA_FILE. Its page has the title "p11proxy client auth: NAME" and
# shows the certificate's subject in #subject. Sets SITE_URL and SITE_TITLE. The sites share one
# nginx, started by browsers_start_sites.
BROWSER_SITES=""
browsers_tls_site() {
  local name=$1 ca=$2 port
  port=$(fixture_free_port)
  BROWSER_SITES+="
  server {
    listen 127.0.0.1:$port ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $FIXTURE_DIR/server.pem;
    ssl_certificate_key $FIXTURE_DIR/server-key.pem;
    ssl_verify_client on;
    ssl_client_certificate $ca;
    location = /favicon.ico { return 404; }
    location / {
      return 200 '<!DOCTYPE html><html><head><title>p11proxy client auth: $name</title></head><body><p id=\"subject\">\$ssl_client_s_dn</p><p id=\"verify\">\$ssl_client_verify</p></body></html>\n';
    }
  }"
  eval "SITE_URL_$name=https://127.0.0.1:$port/"
  SITE_URL="https://127.0.0.1:$port/"
  SITE_TITLE="p11proxy client auth: $name"
}

browsers_start_sites() {
  local prefix="$FIXTURE_DIR/sites" port
  mkdir -p "$prefix/logs"
  cat > "$prefix/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log info;
events { worker_connections 256; }
http {
  access_log $prefix/logs/access.log;
  default_type text/html;
$BROWSER_SITES
}
EOF
  timeout 600 nginx -p "$prefix" -c "$prefix/nginx.conf" >"$prefix/logs/stdout" 2>&1 &
  FIXTURE_PIDS+=($!)
  for port in $(grep -o 'listen 127.0.0.1:[0-9]*' "$prefix/nginx.conf" | cut -d: -f2); do
    fixture_wait_port "$port" "$!" "nginx (browser sites)"
  done
}

# browsers_nssdb DIR NAME LIBRARY...: a new NSS database in DIR trusting the test CA, with the
# PKCS#11 module LIBRARY added under NAME (pairs may repeat).
browsers_nssdb() {
  local dir=$1 out
  shift
  mkdir -p "$dir"
  certutil -N -d "sql:$dir" --empty-password || fail "certutil -N $dir failed"
  certutil -A -d "sql:$dir" -n "p11proxy test CA" -t "CT,," -i "$FIXTURE_DIR/ca.pem" || fail "certutil -A failed"
  while [ $# -ge 2 ]; do
    out=$(modutil -dbdir "sql:$dir" -add "$1" -libfile "$2" -force </dev/null 2>&1) || fail "modutil -add $1 failed: $out"
    shift 2
  done
}

# browsers_firefox_profile DIR PORT: Firefox prefs for a quiet, automated start with Marionette on
# PORT that picks a matching client certificate by itself (the PIN is still asked for).
browsers_firefox_profile() {
  cat > "$1/user.js" <<EOF
user_pref("marionette.port", $2);
user_pref("security.default_personal_cert", "Select Automatically");
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("browser.startup.page", 0);
user_pref("browser.aboutwelcome.enabled", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("datareporting.healthreport.uploadEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("app.update.disabledForTesting", true);
user_pref("app.normandy.enabled", false);
user_pref("extensions.update.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("browser.safebrowsing.malware.enabled", false);
user_pref("browser.safebrowsing.phishing.enabled", false);
user_pref("browser.safebrowsing.downloads.enabled", false);
user_pref("browser.safebrowsing.update.enabled", false);
user_pref("services.settings.server", "http://127.0.0.1:9/");
user_pref("browser.newtabpage.enabled", false);
user_pref("security.OCSP.enabled", 0);
user_pref("network.dns.disablePrefetch", true);
user_pref("network.prefetch-next", false);
user_pref("security.enterprise_roots.enabled", false);
user_pref("remote.prefs.recommended", true);
EOF
}

# browsers_drive BROWSER DIR [browserdrive.py options...]: one start of chromium or firefox with
# its own home, profile and NSS database in DIR (prepared with browsers_nssdb: DIR/nssdb for
# Chromium, as $HOME/.pki/nssdb; DIR itself for Firefox). Output in DIR/drive.out.
browsers_drive() {
  local browser=$1 dir=$2 port status=0
  shift 2
  port=$(fixture_free_port)
  mkdir -p "$dir/home/.pki"
  if [ "$browser" = chromium ]; then
    ln -sfn "$dir/nssdb" "$dir/home/.pki/nssdb"
  else
    browsers_firefox_profile "$dir" "$port"
  fi
  HOME="$dir/home" timeout 300 /usr/bin/python3 "$BROWSERDRIVE" "$browser" --profile "$dir" --port "$port" "$@" \
    >"$dir/drive.out" 2>&1 || status=$?
  return $status
}
