// Package api is the contract between snared and its clients: the HTTP+JSON wire types on the
// daemon's Unix socket, their vocabulary (origins, event kinds, allowlist sources) and the Go
// client snarectl uses. It links nothing of the daemon.
package api

import (
	"time"
)

// The API is HTTP+JSON on the daemon's Unix socket. These types are the wire contract between
// snared and snarectl (and anyone scripting against the socket). Errors come back as a non-2xx
// status with an ErrorResponse body: 400 for bad input (a body must be exactly one JSON
// document), 413 for a body over its limit (8 MB; 512 MB for an import).
//
//	POST /v1/block        BlockRequest      -> BlockResponse
//	POST /v1/unblock      UnblockRequest    -> UnblockResponse
//	GET  /v1/list                           -> ListResponse (streamed as it is read)
//	GET  /v1/list?stream=1                  -> JSON lines of Entry (what snarectl reads); a line
//	                                           {"error": ...} means the list was cut short
//	GET  /v1/status                         -> StatusResponse
//	POST /v1/allow/add    AllowRequest      -> AllowResponse
//	POST /v1/allow/del    AllowRequest      -> AllowResponse
//	GET  /v1/allow                          -> AllowResponse
//	POST /v1/import       ImportRequest     -> ImportResponse
//	POST /v1/import?ttl=&reason=&skip_bad=&name=  text/plain list body -> ImportResponse
//	GET  /v1/export?format=blocked-list|plain -> text/plain body
//	GET  /v1/events?follow=1                -> JSON lines of Event (streamed while follow)

// ErrorResponse is the body of every failed request.
type ErrorResponse struct {
	Error string `json:"error"`
}

// BlockRequest asks to block addresses or CIDRs. TTL is "5d", "12h", "90m", "permanent" or
// empty for the configured default. Reason is at most MaxReasonLen bytes of UTF-8 without
// control characters (CheckReason).
type BlockRequest struct {
	Targets []string `json:"targets"`
	TTL     string   `json:"ttl,omitempty"`
	Reason  string   `json:"reason,omitempty"`
}

// BlockResponse lists the entries as stored after the change.
type BlockResponse struct {
	Entries []Entry `json:"entries"`
}

// UnblockRequest asks to remove blocks.
type UnblockRequest struct {
	Targets []string `json:"targets"`
}

// UnblockResponse names what was removed; NotFound names targets that were not blocked.
type UnblockResponse struct {
	Removed  []string `json:"removed"`
	NotFound []string `json:"not_found,omitempty"`
}

// Entry is one block as the daemon knows it: durable fields from the store plus live counters
// from the enforcer.
type Entry struct {
	Prefix    string    `json:"prefix"` // "198.18.0.7/32", "2001:db8::/64"
	Reason    string    `json:"reason,omitempty"`
	Origin    string    `json:"origin"`         // "manual", "trap", "import", "fleet"
	Node      string    `json:"node,omitempty"` // for origin fleet: the host that made the block
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires,omitzero"` // zero when permanent
	Permanent bool      `json:"permanent"`
	Offences  int       `json:"offences"` // how many times this source was blocked (repeat offences)
	Hits      uint64    `json:"hits"`
	LastHit   time.Time `json:"last_hit,omitzero"`
}

// ListResponse is every active block.
type ListResponse struct {
	Entries []Entry `json:"entries"`
}

// InterfaceStatus is how enforcement is attached to one interface.
type InterfaceStatus struct {
	Name string `json:"name"`
	Mode string `json:"mode"` // "native", "generic", "iptables"
}

// TrapStatus describes trap detection in force.
type TrapStatus struct {
	TCPPorts    string `json:"tcp_ports"` // compact list, e.g. "1,11,15,32771-32774"
	UDPPorts    string `json:"udp_ports"`
	Threshold   int    `json:"threshold"`
	Window      string `json:"window"`
	TCPMode     string `json:"tcp_mode"` // "block" or "log"
	UDPMode     string `json:"udp_mode"`
	ScanEntries int    `json:"scan_entries"`
	Hits        uint64 `json:"hits"`
	Blocks      uint64 `json:"blocks"`
	Suppressed  uint64 `json:"events_suppressed"`
}

// StatusResponse is `snarectl status`.
type StatusResponse struct {
	Version    string            `json:"version"`
	Backend    string            `json:"backend"` // "xdp" or "iptables"
	Fallback   string            `json:"fallback_reason,omitempty"`
	DryRun     bool              `json:"dry_run"`
	Interfaces []InterfaceStatus `json:"interfaces"`
	Entries    int               `json:"entries"`
	Capacity   int               `json:"capacity"`
	Passed     uint64            `json:"passed"`
	Dropped    uint64            `json:"dropped"`
	ByReason   map[string]uint64 `json:"by_reason,omitempty"`
	Evictions  uint64            `json:"evictions"`
	Allowlist  int               `json:"allowlist"`
	Trap       TrapStatus        `json:"trap"`
	StartedAt  time.Time         `json:"started_at"`
}

// AllowRequest adds or removes configured allowlist entries.
type AllowRequest struct {
	Targets []string `json:"targets"`
}

// AllowEntry is one allowlist entry and where it comes from.
type AllowEntry struct {
	Prefix string `json:"prefix"`
	Source string `json:"source"` // "config", "manual", "loopback", "own-address", "gateway", "resolver"
}

// AllowResponse is the whole allowlist after the request.
type AllowResponse struct {
	Entries []AllowEntry `json:"entries"`
}

// ImportRequest carries a block list. Content is the file's text: blocked.list lines
// ("IP YYYYMMDD", keeping their dates: an entry dated D expires at D + TTL) or plain IP/CIDR lines,
// with '#' or ';' comments. With SkipBad false, any bad line rejects the whole import.
type ImportRequest struct {
	Content string `json:"content"`
	TTL     string `json:"ttl,omitempty"`
	Reason  string `json:"reason,omitempty"`
	SkipBad bool   `json:"skip_bad,omitempty"`
	Name    string `json:"name,omitempty"` // file name, for messages
}

// LineError is one rejected import line.
type LineError struct {
	Line  int    `json:"line"`
	Text  string `json:"text"`
	Error string `json:"error"`
}

// ImportResponse reports the outcome; Imported counts entries now blocked, Expired counts dated
// entries already past their deadline (skipped, not an error).
type ImportResponse struct {
	Imported int         `json:"imported"`
	Expired  int         `json:"expired"`
	Skipped  int         `json:"skipped"`
	Errors   []LineError `json:"errors,omitempty"`
}

// Event is one line of the event log (the old scan.log) and of `snarectl events`.
type Event struct {
	Time     time.Time `json:"time"`
	Event    string    `json:"event"` // "scan", "block", "unblock", "expire", "evict", "allow", "disallow", "start", "stop"
	Address  string    `json:"address,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	TTL      string    `json:"ttl,omitempty"`
	Expires  time.Time `json:"expires,omitzero"`
	Source   string    `json:"source,omitempty"` // who decided: "manual", "trap", "import", "sweep", "daemon"
	Proto    string    `json:"proto,omitempty"`
	Ports    []uint16  `json:"ports,omitempty"`
	TCPFlags string    `json:"tcp_flags,omitempty"`
	Action   string    `json:"action,omitempty"` // for scans: "blocked", "logged", "allowlisted"
	Offences int       `json:"offences,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}

// Event kinds of the event log.
const (
	EventScan     = "scan"
	EventBlock    = "block"
	EventUnblock  = "unblock"
	EventExpire   = "expire"
	EventEvict    = "evict"
	EventAllow    = "allow"
	EventDisallow = "disallow"
	EventStart    = "start"
	EventStop     = "stop"
)

// Allow sources, as AllowEntry.Source reports them.
const (
	AllowConfig     = "config"
	AllowManual     = "manual"
	AllowLoopback   = "loopback"
	AllowLinkLocal  = "link-local"
	AllowOwnAddress = "own-address"
	AllowGateway    = "gateway"
	AllowResolver   = "resolver"
)

// Origins of a block.
const (
	OriginManual = "manual"
	OriginTrap   = "trap"
	OriginImport = "import"
	// OriginFleet is a block another host of the fleet made (Entry.Node names it).
	OriginFleet = "fleet"
)

// FleetStatus is GET /v1/fleet: this host in the fleet.
type FleetStatus struct {
	Enabled   bool           `json:"enabled"` // false: no fleet section, nothing else is set
	Node      string         `json:"node,omitempty"`
	Servers   []string       `json:"servers,omitempty"`
	Bucket    string         `json:"bucket,omitempty"`
	Connected bool           `json:"connected"`
	Error     string         `json:"error,omitempty"` // the last connection or engine error
	Embedded  *FleetEmbedded `json:"embedded,omitempty"`
	Outbox    int            `json:"outbox"` // local decisions not yet shared
	// Published: decisions shared. Received: remote decisions applied here. Refused: bad values
	// from the engine. Shed: trap decisions over fleet.max_publish_per_second, not shared.
	// Allowlisted: remote blocks the local allowlist kept out. Stale: unblocks not shared
	// because the fleet blocked the address again since.
	Published   uint64      `json:"published"`
	Received    uint64      `json:"received"`
	Refused     uint64      `json:"refused"`
	Shed        uint64      `json:"shed"`
	Allowlisted uint64      `json:"allowlisted"`
	Stale       uint64      `json:"stale"`
	Peers       []FleetPeer `json:"peers,omitempty"`
	LagMs       float64     `json:"lag_ms"` // decision to arrival here, of the last remote block
}

// FleetEmbedded is the NATS server run inside this snared.
type FleetEmbedded struct {
	Listen        string `json:"listen"`
	ClientURL     string `json:"client_url"`
	ClusterListen string `json:"cluster_listen,omitempty"`
	Routes        int    `json:"routes"`
	StoreDir      string `json:"store_dir"`
	Running       bool   `json:"running"`
}

// FleetPeer is another node this host has seen a decision from.
type FleetPeer struct {
	Node     string    `json:"node"`
	LastSeen time.Time `json:"last_seen"`
}
