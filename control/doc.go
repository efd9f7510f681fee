// Package control is snare's control plane: configuration, the durable block store, the TTL
// sweeper, repeat-offence escalation, the allowlist, the event log, and the API server on a
// Unix socket together with its Go client. It drives enforcement only through backend.Enforcer.
package control
