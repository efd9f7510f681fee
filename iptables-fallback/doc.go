// Package fallback enforces snare's blocks with ipset sets and iptables rules on hosts where XDP
// cannot run. Its directory is iptables-fallback/ (the design's name), which is not a valid Go
// package name, hence "fallback".
package fallback
