#!/usr/bin/env bash
# The dashboard under /ui/ in a real browser: headless Chromium (Debian's chromium) logs in with
# a one-time login link (exchanged for a session cookie), and the DOM shows the fleet's assets, a
# revoked asset as revoked, a hostile model string escaped, the expiry chart and the CSF page
# with Identify..Recover and their states. curl shows 401 without a credential, 403 with a
# device certificate, 200 with the operator's certificate or bearer token. Screenshots go to
# build/test-output/09-dashboard/.
source "$(dirname "$0")/lib.sh"

CHROMIUM=$(command -v chromium || true)
[ -n "$CHROMIUM" ] || { not_ok "chromium missing: run make deps (scripts/install-deps.sh)"; finish; }
OUT=$MQPKI_BUILD/test-output/09-dashboard
rm -rf "$OUT" && mkdir -p "$OUT"

init_ca
for id in meter-01 meter-02 pump-07 valve-3; do
  mqpki asset add "$id" --kind device --model "FM-${id%%-*}" --serial "S-$id" --firmware 2.1 \
    --location "substation-4" >/dev/null
  make_csr "$id"
  mqpki issue --asset "$id" --csr "$T/$id.csr" --out "$T/$id.pem" >/dev/null
done
# A hostile name in a free-text field: it must come back as text, never as markup.
mqpki asset add sensor-x --kind device --model '<script>alert(1)</script>&"x' >/dev/null
mqpki revoke --asset meter-02 --reason key-compromise >/dev/null
mqpki operator add alice --out-dir "$T" >/dev/null
check "mqpkid starts" start_mqpkid
U=$MQPKID_URL

code() { curl -s -o "$T/body" -w '%{http_code}' --cacert "$T/chain.pem" "$@"; }
assert "no credential: 401" test "$(code "$U/ui/")" = 401
assert "401 says Bearer in WWW-Authenticate" bash -c \
  "curl -s -D - -o /dev/null --cacert '$T/chain.pem' '$U/ui/assets' | grep -qi '^www-authenticate: Bearer'"
assert "device certificate: 403" \
  test "$(code --cert "$T/meter-01.pem" --key "$T/meter-01.key" "$U/ui/")" = 403
assert "operator certificate: 200" \
  test "$(code --cert "$T/alice.pem" --key "$T/alice.key" "$U/ui/assets")" = 200
TOKEN=$(mqpki operator token alice)
assert "bearer token: 200" test "$(code -H "Authorization: Bearer $TOKEN" "$U/ui/csf")" = 200
assert "a wrong bearer token: 401" \
  test "$(code -H "Authorization: Bearer ${TOKEN%?}x" "$U/ui/csf")" = 401
assert "operator key files are 0600" test "$(stat -c %a "$T/alice.key") $(stat -c %a "$T/alice.p12")" = "600 600"
assert "static stylesheet served without a credential" test "$(code "$U/ui/static/style.css")" = 200
assert "pages carry a CSP without scripts" bash -c \
  "curl -s -D - -o /dev/null --cacert '$T/chain.pem' -H 'Authorization: Bearer $TOKEN' '$U/ui/' |
   grep -qi \"^content-security-policy: default-src 'none'\""

# A login link works once: the second use is refused.
LINK=$(mqpki operator token alice --login-url --url "$U")
assert "login link: 303 with a HttpOnly Secure SameSite=Strict cookie" bash -c \
  "curl -s -D - -o /dev/null --cacert '$T/chain.pem' '$LINK' | tr -d '\r' |
   grep -q '^Set-Cookie: mqpki_session=.*HttpOnly; Secure; SameSite=Strict'"
assert "login link used twice: 401" test "$(code "$LINK")" = 401

# browse PAGE NAME: Chromium opens a fresh login link that leads to PAGE; DOM in $OUT/NAME.html,
# screenshot in $OUT/NAME.png.
browse() {
  local link
  link=$(mqpki operator token alice --login-url --url "$U")
  for mode in "--dump-dom" "--screenshot=$OUT/$2.png"; do
    [ "$mode" = --dump-dom ] || link=$(mqpki operator token alice --login-url --url "$U")
    timeout 60 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --no-first-run \
      --ignore-certificate-errors --user-data-dir="$T/chromium-$2" --window-size=1280,1000 \
      $mode "$link&next=$1" >"$OUT/$2.html.tmp" 2>>"$OUT/chromium.log" || return 1
    [ "$mode" = --dump-dom ] && mv "$OUT/$2.html.tmp" "$OUT/$2.html"
  done
  rm -f "$OUT/$2.html.tmp"
}

check "chromium loads the overview" browse /ui/ overview
assert "overview: the expiry chart is there" contains "$OUT/overview.html" 'id="expiry-chart"'
assert "overview: the daily chart is there" contains "$OUT/overview.html" 'id="daily-chart"'
assert "overview: 7 assets counted (5 devices, mqpkid, alice)" \
  contains "$OUT/overview.html" 'id="assets-total">7<'
check "chromium loads the assets page" browse /ui/assets assets
for id in meter-01 meter-02 pump-07 valve-3 sensor-x; do
  assert "assets: $id listed" contains "$OUT/assets.html" "asset?id=$id\""
done
assert "assets: meter-02 shown as revoked" \
  grep -q 'data-state="revoked"><td><a href="/ui/asset?id=meter-02">' "$OUT/assets.html"
assert "assets: the hostile model is text, not markup" \
  contains "$OUT/assets.html" '&lt;script&gt;alert(1)&lt;/script&gt;&amp;"x'
assert "assets: no script element anywhere" bash -c "! grep -qi '<script' '$OUT/assets.html'"
check "chromium loads meter-02's page" browse "/ui/asset?id=meter-02" asset
assert "asset page: state revoked, certificate revoked" bash -c \
  "grep -q 'id=\"asset-state\" class=\"st state-revoked\"' '$OUT/asset.html' &&
   grep -q 'cert-revoked' '$OUT/asset.html'"
check "chromium loads the CSF page" browse /ui/csf csf
for f in Identify Protect Detect Respond Recover; do
  assert "CSF: $f listed with a tier" grep -q "<td>$f ([A-Z][A-Z])</td><td>[1-4] " "$OUT/csf.html"
done
assert "CSF: states shown" bash -c \
  "grep -q 'class=\"st met\"' '$OUT/csf.html' && grep -q 'class=\"st not-met\"' '$OUT/csf.html'"
check "chromium loads the brokers page" browse /ui/brokers brokers
assert "screenshots saved" bash -c "ls '$OUT'/*.png | wc -l | grep -qx 5"
assert "a page at an unknown path: 404" \
  test "$(code -H "Authorization: Bearer $TOKEN" "$U/ui/nope")" = 404
assert "a hostile query: 400" \
  test "$(code -H "Authorization: Bearer $TOKEN" "$U/ui/assets?q=%3Cx%3E")" = 400
finish
