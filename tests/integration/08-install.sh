#!/usr/bin/env bash
# 08-install: the install chain an operator uses. `make deb` (cpack in the build tree) makes the
# four packages; each is unpacked into a fresh root (dpkg -x), and from that root mqpki, mqpkid
# and mqpki-device run, the installed mqpki finds the installed broker plugin and Mosquitto
# runs with it, every man page renders, pkg-config finds mqpki-device and a program builds and
# runs against the installed header and library. lintian (where installed) finds nothing; the
# systemd units verify and score "OK" or better (where systemd-analyze is present); mqpkid
# speaks sd_notify. `make install` with DESTDIR puts the same files under PREFIX. The command
# line's contract: --help and --version on every binary, EXAMPLES in every --help, group help,
# docs/cli.md and mqpki(1) naming every command that `mqpki --help` lists, bash completion.
. "$(dirname "$0")/lib.sh"

ROOT=$T/root
ARCH=$(dpkg --print-architecture)

# ---- make deb ------------------------------------------------------------------------------
check "cpack -G DEB (make deb)" cpack -G DEB --config "$MQPKI_BUILD/CPackConfig.cmake" -B "$T/deb"
for p in mqpki mqpki-broker-plugin libmqpki-device libmqpki-device-dev; do
  deb=$T/deb/${p}_$(mqpki --version | cut -d' ' -f2)_$ARCH.deb
  assert "package $p built" test -s "$deb"
  [ -s "$deb" ] && dpkg -x "$deb" "$ROOT"
  dpkg-deb -f "$deb" Depends >"$T/depends.$p" 2>/dev/null || true
done
assert "mqpki depends on the libraries it links (shlibdeps)" contains "$T/depends.mqpki" "libssl3"
assert "mqpki-broker-plugin depends on mqpki and mosquitto" \
  grep -q "mqpki (= .*mosquitto" "$T/depends.mqpki-broker-plugin"
assert "libmqpki-device-dev depends on libmqpki-device" \
  contains "$T/depends.libmqpki-device-dev" "libmqpki-device ("

# lintian, where installed (not in install-deps: it pulls in some 130 packages). The maintainer
# address is a build setting (MQPKI_DEB_MAINTAINER), whose default lintian calls bogus.
if command -v lintian >/dev/null; then
  lintian --tag-display-limit 0 --suppress-tags bogus-mail-host,bogus-mail-host-in-debian-changelog \
    "$T"/deb/*.deb >"$T/lintian.out" 2>&1 || true
  grep -E '^[EW]: ' "$T/lintian.out" | sed 's/^/#   /' || true
  assert "lintian: no errors or warnings" bash -c "! grep -qE '^[EW]: ' '$T/lintian.out'"
else
  echo "ok - # SKIP lintian not installed"
fi

# The installed tree: the library and its SONAME link, the plugin, the header, the units.
LIBS=$(dirname "$(find "$ROOT" -name 'libmqpki-device.so.0' | head -1)")
for f in usr/bin/mqpki usr/sbin/mqpkid usr/bin/mqpki-device usr/include/mqpki_device.h \
         lib/systemd/system/mqpkid.service lib/systemd/system/mqpki-broker@.service \
         lib/systemd/system/mqpki-device-agent.service \
         usr/share/bash-completion/completions/mqpki; do
  assert "installed /$f" test -e "$ROOT/$f"
done
assert "libmqpki-device.so.0 (SONAME link) installed" test -e "$LIBS/libmqpki-device.so.0"
assert "libmqpki-device's SONAME is libmqpki-device.so.0" \
  bash -c "objdump -p '$LIBS/libmqpki-device.so.0' | grep -q 'SONAME *libmqpki-device.so.0'"
PLUGIN=$(find "$ROOT" -name mqpki_mosquitto.so | head -1)
assert "broker plugin installed under a lib/.../mqpki/ directory" \
  test -n "$PLUGIN" -a "$(basename "$(dirname "$PLUGIN")")" = mqpki

# ---- the installed binaries run --------------------------------------------------------------
export LD_LIBRARY_PATH=$LIBS
for b in usr/bin/mqpki usr/sbin/mqpkid usr/bin/mqpki-device; do
  check "installed $(basename $b) --version" "$ROOT/$b" --version
  assert "$(basename $b) --version names itself" contains "$T/out" "^$(basename $b) [0-9]"
  check "installed $(basename $b) --help" "$ROOT/$b" --help
done

# The installed mqpki writes broker configurations naming the installed plugin.
export MQPKI_HOME=$T/home
check "installed mqpki init" "$ROOT/usr/bin/mqpki" init
BPORT=$(free_port)
check "installed mqpki broker init" "$ROOT/usr/bin/mqpki" broker init b1 --port "$BPORT"
assert "the broker configuration names the installed plugin" \
  grep -qx "plugin $PLUGIN" "$MQPKI_HOME/brokers/b1/mosquitto.conf"
# A broker made by the build tree's mqpki, run by the installed one, loads the installed plugin.
BPORT=$(free_port)
check "build-tree mqpki broker init b2" mqpki broker init b2 --port "$BPORT"
assert "its configuration names the build tree's plugin" \
  grep -qx "plugin $MQPKI_BUILD/lib/mqpki_mosquitto.so" "$MQPKI_HOME/brokers/b2/mosquitto.conf"
"$ROOT/usr/bin/mqpki" broker run b2 >"$T/broker.log" 2>&1 &
BROKER_PID=$!
PIDS+=("$BROKER_PID")
assert "Mosquitto runs with the installed plugin and listens" wait_for 10 listening "$BPORT"
assert "broker run set the plugin line to the installed plugin" \
  grep -qx "plugin $PLUGIN" "$MQPKI_HOME/brokers/b2/mosquitto.conf"
assert "the installed plugin loaded" grep -q "Loading plugin: $PLUGIN" "$T/broker.log"
assert "the plugin is ready" grep -q "mqpki: plugin ready for broker b2" "$T/broker.log"
stop_pid "$BROKER_PID"
unset LD_LIBRARY_PATH

# ---- man pages -----------------------------------------------------------------------------
for page in man1/mqpki.1 man8/mqpkid.8 man1/mqpki-device.1 man5/mqpki.conf.5; do
  f=$ROOT/usr/share/man/$page.gz
  assert "$page installed" test -s "$f"
  MANWIDTH=80 man -l "$f" >"$T/man.txt" 2>"$T/man.err" || true
  assert "man -l $page renders its NAME" grep -q "^NAME" "$T/man.txt"
  zcat "$f" | groff -man -Tutf8 -ww -z 2>"$T/groff.err" || true
  assert "$page: no groff warnings" test ! -s "$T/groff.err"
done
MANWIDTH=200 man -l "$ROOT/usr/share/man/man1/mqpki.1.gz" >"$T/mqpki.man" 2>/dev/null || true
MANWIDTH=200 man -l "$ROOT/usr/share/man/man5/mqpki.conf.5.gz" >"$T/conf.man" 2>/dev/null || true
assert "mqpki.conf(5) documents every key of docs/configuration.md" bash -c "
  grep -o '^| [^|]* | \`[a-z_]*\`' '$MQPKI_SOURCE/docs/configuration.md' |
    sed 's/.*\`\\(.*\\)\`/\\1/' | while read -r k; do grep -q \"^ *\$k (default\" '$T/conf.man' || exit 1; done"

# ---- pkg-config and a program against the installed library --------------------------------
export PKG_CONFIG_SYSROOT_DIR=$ROOT
export PKG_CONFIG_PATH=$LIBS/pkgconfig
check "pkg-config --cflags --libs mqpki-device" pkg-config --cflags --libs mqpki-device
assert "pkg-config points into the installed root" contains "$T/out" "-I$ROOT/usr/include"
cat >"$T/hello.c" <<'EOF'
#include <stdio.h>
#include <mqpki_device.h>
int main(void)
{
    printf("%s\n", mqpki_device_strerror(0));
    return mqpki_device_exit_status(0);
}
EOF
# A sanitizer build's library needs the program built the same way (the ASan runtime first).
san=""
objdump -p "$LIBS/libmqpki-device.so.0" | grep -q 'NEEDED.*libasan' && san="-fsanitize=address,undefined"
# shellcheck disable=SC2046,SC2086
check "a program compiles and links against the installed header and library" \
  cc -Wall -Werror $san -o "$T/hello" "$T/hello.c" $(pkg-config --cflags --libs mqpki-device)
check "it runs with the installed library" env LD_LIBRARY_PATH="$LIBS" "$T/hello"
unset PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_PATH

# ---- systemd units -------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$T/units"
  for u in mqpkid.service mqpki-broker@.service mqpki-device-agent.service; do
    # ExecStart= names /usr/...: point it into the root, where the binaries are.
    sed "s#=/usr/#=$ROOT/usr/#" "$ROOT/lib/systemd/system/$u" >"$T/units/$u"
  done
  cp "$T/units/mqpki-broker@.service" "$T/units/mqpki-broker@b1.service"
  for u in mqpkid.service mqpki-broker@b1.service mqpki-device-agent.service; do
    check "systemd-analyze verify $u" systemd-analyze verify --man=no "$T/units/$u"
    systemd-analyze security --offline=yes "$T/units/$u" >"$T/sec.out" 2>&1 || true
    level=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p' \
      "$T/sec.out")
    assert "systemd-analyze security $u: ${level:-no score} (OK or better)" \
      bash -c "echo '$level' | grep -Eq ' (PERFECT|SAFE|OK)$'"
  done
else
  echo "ok - # SKIP systemd-analyze not installed"
fi

# The maintainer scripts' user and data directory, as systemd-sysusers and systemd-tmpfiles
# make them from the installed files (here into the root).
if command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
  mkdir -p "$ROOT/etc"
  check "systemd-sysusers: the mqpki and mqpki-device users" \
    systemd-sysusers --root="$ROOT" mqpki.conf mqpki-device.conf
  assert "user mqpki, no login shell" grep -q "^mqpki:x:.*:/var/lib/mqpki:/usr/sbin/nologin$" \
    "$ROOT/etc/passwd"
  assert "user mqpki-device" grep -q "^mqpki-device:x:" "$ROOT/etc/passwd"
  check "systemd-tmpfiles: /var/lib/mqpki" systemd-tmpfiles --root="$ROOT" --create mqpki.conf
  uid=$(grep "^mqpki:" "$ROOT/etc/passwd" | cut -d: -f3)
  assert "/var/lib/mqpki is 0700, owned by mqpki" \
    test "$(stat -c '%a %u' "$ROOT/var/lib/mqpki")" = "700 $uid"
else
  echo "ok - # SKIP systemd-sysusers or systemd-tmpfiles not installed"
fi

# ---- sd_notify: mqpkid tells systemd when it is ready, reloading and stopping -------------------
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as log:
    while True:
        log.write(s.recv(4096).decode() + "\n")
        log.flush()
' "$T/notify.sock" "$T/notify.log" &
PIDS+=("$!")
wait_for 5 test -S "$T/notify.sock"
export NOTIFY_SOCKET=$T/notify.sock
check "mqpkid starts with NOTIFY_SOCKET" start_mqpkid
unset NOTIFY_SOCKET
assert "mqpkid sends READY=1 once listening" wait_for 10 grep -qx "READY=1" "$T/notify.log"
kill -HUP "$MQPKID_PID"
assert "SIGHUP: RELOADING=1, then READY=1 again" \
  wait_for 10 bash -c "[ \"\$(grep -c '' '$T/notify.log')\" -ge 3 ] &&
    sed -n 2,3p '$T/notify.log' | tr '\n' ' ' | grep -qx 'RELOADING=1 READY=1 '"
stop_pid "$MQPKID_PID"
assert "SIGTERM: STOPPING=1" wait_for 5 grep -qx "STOPPING=1" "$T/notify.log"

# ---- make install (DESTDIR) ----------------------------------------------------------------
check "make install with DESTDIR" env DESTDIR="$T/stage" cmake --install "$MQPKI_BUILD" \
  --prefix /opt/mqpki
assert "DESTDIR install: bin/mqpki" test -x "$T/stage/opt/mqpki/bin/mqpki"
assert "DESTDIR install: sbin/mqpkid" test -x "$T/stage/opt/mqpki/sbin/mqpkid"
assert "DESTDIR install: the unit names the prefix's mqpkid" \
  grep -q "^ExecStart=/opt/mqpki/sbin/mqpkid " "$T/stage/opt/mqpki/lib/systemd/system/mqpkid.service"
assert "DESTDIR install: the .pc file names the prefix" \
  grep -qx "prefix=/opt/mqpki" "$(find "$T/stage" -name mqpki-device.pc)"

# ---- the command line's contract ----------------------------------------------------------
for b in mqpki mqpkid mqpki-device mqpki-sensor mqpki-fieldbus; do
  check "$b --version" "$b" --version
  check "$b --help exits 0" "$b" --help
  assert "$b --help has EXAMPLES" contains "$T/out" "^EXAMPLES"
done
for c in enroll renew status run; do
  check "mqpki-device $c --help exits 0" mqpki-device "$c" --help
  assert "mqpki-device $c --help has EXAMPLES" contains "$T/out" "^EXAMPLES"
done
mqpki --help | sed -n '/^commands:/,/^$/s/^  \([a-z][a-z-]*\( [a-z][a-z-]*\)\{0,1\}\)  .*/\1/p' \
  >"$T/commands"
assert "mqpki --help lists commands" test "$(wc -l <"$T/commands")" -gt 10
missing_doc="" missing_ex="" missing_man=""
while read -r cmd; do
  # shellcheck disable=SC2086
  mqpki $cmd --help >"$T/help" 2>&1 || missing_ex="$missing_ex [$cmd: exit $?]"
  grep -q "^EXAMPLES" "$T/help" || missing_ex="$missing_ex [$cmd]"
  grep -qF "\`mqpki $cmd" "$MQPKI_SOURCE/docs/cli.md" || missing_doc="$missing_doc [$cmd]"
  grep -q "^ *$cmd$" "$T/mqpki.man" || missing_man="$missing_man [$cmd]"
done <"$T/commands"
assert "every command's --help exits 0 with EXAMPLES${missing_ex:+ (not:$missing_ex)}" \
  test -z "$missing_ex"
assert "docs/cli.md documents every command of mqpki --help${missing_doc:+ (not:$missing_doc)}" \
  test -z "$missing_doc"
assert "mqpki(1) has a section for every command${missing_man:+ (not:$missing_man)}" \
  test -z "$missing_man"
for g in $(cut -s -d' ' -f1 "$T/commands" | sort -u); do
  # `mqpki crl` and `mqpki alerts` are also commands of their own
  case $g in crl | alerts) continue ;; esac
  mqpki "$g" --help >"$T/group" 2>&1 || true
  want=$(grep -c "^$g " "$T/commands")
  got=$(grep -c "^  $g " "$T/group" || true)
  assert "mqpki $g --help lists its $want commands (got $got)" test "$got" -eq "$want"
done
expect_fail 1 "mqpki asset bogus: unknown command" mqpki asset bogus

# Tables: a header even without rows; stored text is never cut, and its control bytes never
# reach the output raw (a redirected file here).
check "cert list of an asset without certificates" mqpki cert list --asset b1-none
assert "cert list without rows prints its header" grep -q "^SERIAL .*NOT AFTER" "$T/out"
long="a-model-name-much-longer-than-its-24-column"
check "asset with a long model and a terminal escape" \
  mqpki asset add d1 --kind device --model "$long$(printf '\033[31m')red"
check "asset list" mqpki asset list
assert "asset list shows the whole model" contains "$T/out" "$long"
assert "asset list writes no raw escape byte" bash -c "! grep -q \$'\\033' '$T/out'"
assert "asset list shows the escape byte as \\x1b" contains "$T/out" '\\x1b\[31mred'

# Audit events name revocation reasons as --json outputs do, never by number.
check "issue a certificate for d1" bash -c "openssl req -new -newkey ec -pkeyopt \
  ec_paramgen_curve:P-256 -nodes -subj /CN=d1 -keyout '$T/d1.key' -out '$T/d1.csr' 2>/dev/null &&
  mqpki issue --asset d1 --csr '$T/d1.csr' --out '$T/d1.pem'"
check "revoke d1 (key-compromise)" mqpki revoke --asset d1 --reason key-compromise
check "asset show d1 --json" mqpki asset show d1 --json
assert "the cert.revoke event's reason is \"key-compromise\"" \
  bash -c "jq -e '[.history[] | select(.action == \"cert.revoke\") | .detail.reason] | \
    length > 0 and all(. == \"key-compromise\")' '$T/out' >/dev/null"

# ---- bash completion ----------------------------------------------------------------------
check "completion script parses" bash -n "$MQPKI_SOURCE/packaging/completion/mqpki"
complete_words() {
  bash -c '. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _mqpki 2>/dev/null
           printf "%s\n" "${COMPREPLY[@]}"' _ "$MQPKI_SOURCE/packaging/completion/mqpki" "$@"
}
got=$(complete_words mqpki as)
assert "completion: mqpki as<TAB> -> asset (got: $got)" test "$got" = asset
got=$(complete_words mqpki asset l)
assert "completion: mqpki asset l<TAB> -> list (got: $got)" test "$got" = list
got=$(complete_words mqpki revoke --rea)
assert "completion: mqpki revoke --rea<TAB> -> --reason (got: $got)" test "$got" = --reason

finish
