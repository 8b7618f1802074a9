package main

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Where a request comes from: the client address (behind TRUSTED_PROXIES, from
// X-Forwarded-For), its network for limits and lockouts, and its user agent.

// origin is the client address and user agent of a request, for sessions, limits and audit.
type origin struct {
	ip        string // recorded in sessions and the audit log
	userAgent string
}

// network is what limits and lockouts count the client by (see clientNetwork).
func (o origin) network() string { return clientNetwork(o.ip) }

// originOf returns the client of the request, as withRequestState recorded it.
func originOf(ctx context.Context) origin {
	if s := stateOf(ctx); s != nil {
		return s.origin
	}
	return origin{}
}

// clientIP is the socket peer, or, when that peer is a trusted proxy, the right-most address
// of X-Forwarded-For that is not itself a trusted proxy (the left part is client-supplied).
// X-Forwarded-For is believed only from trusted proxies; otherwise any client could claim any
// address and walk around the limits.
func clientIP(r *http.Request, trusted []netip.Prefix) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	peer = peer.Unmap().WithZone("")
	if !isTrusted(peer, trusted) {
		return peer.String()
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // a garbled entry: trust nothing to its left
		}
		// A zone names an interface of whoever wrote it, not a client, and is free text.
		if hop = hop.Unmap().WithZone(""); !isTrusted(hop, trusted) {
			return hop.String()
		}
		peer = hop
	}
	return peer.String()
}

// clientNetwork is what limits and lockouts count a client by: its address, or for IPv6 the
// /64 the address is in, since one host commonly holds a whole /64 to pick addresses from.
func clientNetwork(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil || !addr.Is6() {
		return ip
	}
	return netip.PrefixFrom(addr, 64).Masked().String()
}

func isTrusted(addr netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// parseCIDRs reads a comma-separated list of CIDR prefixes or single addresses.
func parseCIDRs(s string) ([]netip.Prefix, error) {
	var prefixes []netip.Prefix
	for _, field := range strings.Split(s, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		if !strings.Contains(field, "/") {
			addr, err := netip.ParseAddr(field)
			if err != nil {
				return nil, err
			}
			prefixes = append(prefixes, netip.PrefixFrom(addr, addr.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(field)
		if err != nil {
			return nil, err
		}
		prefixes = append(prefixes, p.Masked())
	}
	return prefixes, nil
}
