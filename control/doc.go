// Package control is snare's daemon: blocks and unblocks, the allowlist, trap events, the TTL
// sweeper, repeat-offence escalation, import and export, reload, and the API server on a Unix
// socket, one file per job. Its parts live beside it: api (wire types and client), store (the
// durable store), config, input (parsing what users type), blocklist (list files), eventlog and
// metrics. It drives enforcement only through backend.Enforcer; cmd/snared picks the back-end.
//
// The daemon's life (cmd/snared is a thin shell around it):
//
//   - Open opens the bbolt store (<state_dir>/snare.db, locked against a second daemon), the
//     event log and the enforcer (Options.OpenEnforcer, while the store is read), then rebuilds the kernel from the store: trap blocks the kernel made while
//     no daemon ran are adopted, expired entries dropped, missing or changed ones written, unknown
//     ones removed, all without touching what is already right, so a restart leaves no gap.
//     Settings, the allowlist (implicit + config + manual) and the trap ports are in force when
//     Open returns.
//   - Serve answers the API and runs the sweeper (expiry, eviction repair, adoption of trap blocks
//     whose events were rate-limited, implicit-allowlist rediscovery), the trap-event reader and
//     the trap-port watcher until its context ends.
//   - Reload applies a new configuration (SIGHUP) without dropping enforcement.
//   - Close releases the daemon's handles and leaves enforcement in place.
//
// Every accepted change is committed to the store (fsync) in the same transaction that updates
// the enforcer, before the API answers; if the enforcer refuses, the transaction rolls back.
// The store is the source of truth; deadlines are wall-clock times there.
package control
