#!/usr/bin/env bash
# make demo: the provisioning workflow, driven through the MQTT console against
# the daemon in development mode (--dev: a SoftHSM2 lab token and the embedded broker,
# which runs only in that mode and only on loopback).
# Every artefact is verified with openssl. The daemon is stopped at the end.
set -euo pipefail

BIN=${BIN:-bin/iot-hsm}
OUT=${OUT:-demo-out}
# Not 1883: a mosquitto service installed on this machine (make deps) may hold it.
LISTEN=${DEMO_LISTEN:-127.0.0.1:18830}
export IOT_HSM_BROKER="tcp://$LISTEN"
export IOT_HSM_DEVICE=ihsm-demo

step() { printf '\n==> %s\n' "$*"; }
console() { "$BIN" console --timeout 60s "$@"; }

rm -rf "$OUT"
mkdir -p "$OUT"
cat > "$OUT/config.toml" <<CONF
device_id = "$IOT_HSM_DEVICE"
state_dir = "$OUT/state"
[mqtt]
embedded_listen = "$LISTEN"
CONF

step "starting the daemon: iot-hsm run --dev (SoftHSM2 token in $OUT/state, embedded broker on $LISTEN)"
"$BIN" run --dev --config "$OUT/config.toml" >"$OUT/daemon.log" 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null || true; wait $DAEMON 2>/dev/null || true' EXIT
for i in $(seq 1 100); do
	if "$BIN" console devices --wait 200ms 2>/dev/null | grep -q "$IOT_HSM_DEVICE"; then break; fi
	if ! kill -0 $DAEMON 2>/dev/null; then cat "$OUT/daemon.log"; echo "the daemon exited"; exit 1; fi
	sleep 0.1
done
console devices

step "the HSMs the appliance sees (hsm.list)"
console hsm.list
HSM=$(console --json hsm.list | sed -n 's/.*"id": *"\(pkcs11-[^"]*\)".*/\1/p' | head -1)
[ -n "$HSM" ] || { echo "no PKCS#11 token listed"; exit 1; }

step "slot.provision $HSM/01: a P-256 key generated inside the token"
console slot.provision --hsm "$HSM" --slot 01 --mode generate --key-type p256 --label "demo root"
ROOT_CA=$(console --json slot.show --slot-id "$HSM/01" | sed -n 's/.*"ca_id": *"\([0-9a-f]*\)".*/\1/p' | head -1)

step "a provisioning certificate for the root, as the PKI hands it out"
"$BIN" console make-provisioning-cert --cn "iot-hsm Demo Root CA" --org "iot-hsm demo" --validity 87600h --path-len 1 --out "$OUT/root-provisioning.pem"

step "slot.selfsign: the root CA certificate, signed inside the token"
console slot.selfsign --slot-id "$HSM/01" --provisioning-cert "$OUT/root-provisioning.pem" --out "$OUT/root.pem"

step "slot.provision $HSM/02 (P-384) and slot.csr for an intermediate"
console slot.provision --hsm "$HSM" --slot 02 --mode generate --key-type p384 --label "demo issuing CA"
"$BIN" console make-provisioning-cert --cn "iot-hsm Demo Issuing CA" --org "iot-hsm demo" --validity 43800h --path-len 0 --out "$OUT/issuing-provisioning.pem"
console slot.csr --slot-id "$HSM/02" --provisioning-cert "$OUT/issuing-provisioning.pem" --out "$OUT/issuing.csr"

step "sign (on the root's CA topic): the root signs the intermediate's CSR"
console sign --ca-id "$ROOT_CA" --kind certificate --csr "$OUT/issuing.csr" --is-ca --max-path-len 0 \
	--key-usage cert_sign,crl_sign,digital_signature --validity 43800h --out "$OUT/issuing.pem"

step "slot.import_cert: the signed intermediate goes back into slot 02"
console slot.import_cert --slot-id "$HSM/02" --certificate "$OUT/issuing.pem" --chain "$OUT/root.pem"

step "a TLS server asks for a certificate: CSR made with openssl, issued by the intermediate"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$OUT/server.key" \
	-subj "/CN=demo.example.com" -addext "subjectAltName=DNS:demo.example.com" -out "$OUT/server.csr" 2>/dev/null
console sign --slot-id "$HSM/02" --kind certificate --csr "$OUT/server.csr" --validity 2160h \
	--key-usage digital_signature --ext-key-usage server_auth --out "$OUT/server.pem"

step "sign kind crl: the intermediate's first CRL"
console sign --slot-id "$HSM/02" --kind crl --number 1 --next-update-in 168h --out "$OUT/issuing.crl"

step "verifying every artefact with openssl"
cat "$OUT/issuing.pem" "$OUT/root.pem" > "$OUT/chain.pem"
openssl verify -x509_strict -CAfile "$OUT/root.pem" "$OUT/root.pem"
openssl verify -x509_strict -CAfile "$OUT/root.pem" "$OUT/issuing.pem"
openssl verify -x509_strict -purpose sslserver -CAfile "$OUT/root.pem" -untrusted "$OUT/issuing.pem" "$OUT/server.pem"
openssl crl -in "$OUT/issuing.crl" -CAfile "$OUT/chain.pem" -verify -noout
openssl verify -crl_check -CRLfile "$OUT/issuing.crl" -CAfile "$OUT/root.pem" -untrusted "$OUT/issuing.pem" "$OUT/server.pem"

step "status"
console status

step "stopping the daemon"
kill -TERM $DAEMON
wait $DAEMON || true
trap - EXIT
step "done: artefacts in $OUT/"
