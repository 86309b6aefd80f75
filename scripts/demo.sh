#!/usr/bin/env bash
# A guided tour on a fresh machine: installs what is missing, starts a
# throwaway OpenSSH sshd on 127.0.0.1 with temporary keys, starts a muxguard
# master for it, runs ssh, scp, rsync and git through the one shared
# connection, then shows what OpenSSH's master never did: a policy that
# refuses a request (and why), the audit log and its check, and the
# master's status with its sandbox. Everything it starts, it stops.
#
# MUXGUARD_BIN=/path/to/muxguard skips the build (the test suite does that).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
need=()
for tool in sshd:openssh-server ssh:openssh-client rsync:rsync git:git; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -n "${MUXGUARD_BIN:-}" ]; then
    muxguard=$MUXGUARD_BIN
else
    echo "== building muxguard"
    (cd "$repo" && cargo build --release --quiet)
    muxguard="$repo/target/release/muxguard"
fi

work=$(mktemp -d /tmp/muxguard-demo.XXXXXX)
sshd_pid=""
cleanup() {
    ssh -F "$work/ssh_config" -O exit demo >/dev/null 2>&1 || true
    [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/user_key"
cp "$work/user_key.pub" "$work/authorized_keys"
mkdir -p /run/sshd 2>/dev/null || true
cat >"$work/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
StrictModes no
UsePAM no
PidFile none
PrintMotd no
Subsystem sftp internal-sftp
AcceptEnv LANG LC_* GIT_PROTOCOL
LogLevel VERBOSE
SetEnv SHLVL=1
EOF
echo "[127.0.0.1]:$port $(cat "$work/host_key.pub")" >"$work/known_hosts"
mkdir -m 700 "$work/ctl"
cat >"$work/ssh_config" <<EOF
Host demo
    HostName 127.0.0.1
    Port $port
    User $(id -un)
    IdentityFile $work/user_key
    IdentitiesOnly yes
    UserKnownHostsFile $work/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ControlPath $work/ctl/%C
EOF

echo "== starting a throwaway sshd on 127.0.0.1:$port"
/usr/sbin/sshd -D -e -f "$work/sshd_config" -E "$work/sshd.log" &
sshd_pid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# The demo's own policy, state and (empty) system policy: nothing of yours
# is read or changed.
export XDG_STATE_HOME="$work/state" XDG_CONFIG_HOME="$work/config"
mkdir -p "$work/config/muxguard"
cat >"$work/config/muxguard/policy.toml" <<'POLICY'
[defaults]
action = "allow"

[[rule]]
name = "nothing is deleted on demo through a shared connection"
hosts = ["demo"]
commands = ["rm *"]
action = "deny"
POLICY
no_system=(--system-policy "$work/no-system-policy.toml")
echo "== muxguard connect demo   (authenticates once, then backgrounds)"
"$muxguard" connect -F "$work/ssh_config" "${no_system[@]}" demo
ssh -F "$work/ssh_config" -O check demo

run() { echo; echo "\$ $*"; "$@"; }
run ssh -F "$work/ssh_config" demo 'echo "hello from $(hostname) as $(id -un)"; exit 7' || echo "(exit status $? — the remote 'exit 7' came through)"
head -c 5M /dev/urandom >"$work/payload"
run scp -q -F "$work/ssh_config" "$work/payload" "demo:$work/payload.scp"
run rsync -a -e "ssh -F $work/ssh_config" "$work/payload" "demo:$work/payload.rsync"
cmp "$work/payload" "$work/payload.scp" && cmp "$work/payload" "$work/payload.rsync" && echo "(scp and rsync copies are byte-identical)"
# Both repositories name their branch, whatever git's default is.
git init -q --bare --initial-branch=main "$work/repo.git"
git -C "$work" init -q --initial-branch=main src
git -C "$work/src" -c user.email=demo@example.com -c user.name=demo commit -q --allow-empty -m "first commit"
git -C "$work/src" push -q "$work/repo.git" main
run env GIT_SSH_COMMAND="ssh -F $work/ssh_config" git clone -q "demo:$work/repo.git" "$work/clone"
git -C "$work/clone" log --oneline

echo
echo "== sshd authenticated this many connections (everything went through one):"
grep -c "Accepted publickey" "$work/sshd.log"

echo
echo "== a policy decides every request: this one refuses 'rm' on demo."
echo "   The command never runs, the reason is on ssh's stderr, and ssh does"
echo "   not fall back to a connection of its own."
touch "$work/keep-me"
run ssh -F "$work/ssh_config" demo "rm $work/keep-me" || echo "(exit status $?)"
[ -e "$work/keep-me" ] && echo "($work/keep-me is still there)"

echo
echo "== why: muxguard policy explain names the rule, file and line"
run "$muxguard" policy explain "${no_system[@]}" --host demo --command "rm $work/keep-me"

echo
echo "== every reused session is in a hash-chained audit log"
run "$muxguard" audit
run "$muxguard" audit verify

echo
echo "== what the master holds now, and the sandbox it runs in"
run "$muxguard" status -F "$work/ssh_config" demo

echo
echo "== the master's log:"
cat "$work"/state/muxguard/*.log
run ssh -F "$work/ssh_config" -O exit demo
