package main

import (
	"net/http/httptest"
	"slices"
	"testing"
)

// Tests of the client address behind trusted proxies, and of the network it is counted in.

func TestClientIP(t *testing.T) {
	t.Parallel()
	trusted, err := parseCIDRs("10.0.0.0/8, 2001:db8:1::/48")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name         string
		remoteAddr   string
		forwardedFor []string // one X-Forwarded-For header per element
		want         string
	}{
		{"no proxy", "198.51.100.7:4000", nil, "198.51.100.7"},
		{"untrusted peer: header ignored", "198.51.100.7:4000", []string{"203.0.113.1"}, "198.51.100.7"},
		{"trusted peer, one hop", "10.0.0.2:4000", []string{"203.0.113.1"}, "203.0.113.1"},
		{"trusted peer without header", "10.0.0.2:4000", nil, "10.0.0.2"},
		{"chain through a second trusted proxy", "10.0.0.2:4000", []string{"203.0.113.1, 10.0.0.3"}, "203.0.113.1"},
		{"spoofed left part ignored", "10.0.0.2:4000", []string{"192.0.2.66, 203.0.113.1"}, "203.0.113.1"},
		{"several headers form one chain", "10.0.0.2:4000", []string{"192.0.2.66", "203.0.113.1"}, "203.0.113.1"},
		{"garbage entry: nothing to its left believed", "10.0.0.2:4000", []string{"203.0.113.1, garbage"}, "10.0.0.2"},
		{"garbage behind a trusted hop", "10.0.0.2:4000", []string{"garbage, 10.0.0.3"}, "10.0.0.3"},
		{"garbage left of the client", "10.0.0.2:4000", []string{"garbage, 203.0.113.1"}, "203.0.113.1"},
		{"IPv6 peer, untrusted", "[2001:db8:2::5]:4000", []string{"203.0.113.1"}, "2001:db8:2::5"},
		{"IPv6 peer, trusted", "[2001:db8:1::5]:4000", []string{"2001:db8:3::9"}, "2001:db8:3::9"},
		{"IPv4-mapped IPv6 peer, untrusted", "[::ffff:198.51.100.7]:4000", []string{"203.0.113.1"}, "198.51.100.7"},
		{"IPv4-mapped IPv6 peer, trusted", "[::ffff:10.0.0.2]:4000", []string{"203.0.113.1"}, "203.0.113.1"},
		{"IPv4-mapped forwarded client", "10.0.0.2:4000", []string{"::ffff:203.0.113.1"}, "203.0.113.1"},
		{"zone of a forwarded client dropped", "10.0.0.2:4000", []string{"fe80::1%\xff"}, "fe80::1"},
		{"zone of the peer dropped", "[fe80::1%eth0]:4000", nil, "fe80::1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tc.remoteAddr
			for _, h := range tc.forwardedFor {
				r.Header.Add("X-Forwarded-For", h)
			}
			if got := clientIP(r, trusted); got != tc.want {
				t.Errorf("clientIP = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClientNetwork(t *testing.T) {
	t.Parallel()
	for ip, want := range map[string]string{
		"198.51.100.7":            "198.51.100.7",
		"2001:db8:1:2::1":         "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::9":    "2001:db8:1:2::/64",
		"2001:db8:1:3::1":         "2001:db8:1:3::/64",
		"not an address (a test)": "not an address (a test)",
	} {
		if got := clientNetwork(ip); got != want {
			t.Errorf("clientNetwork(%q) = %q, want %q", ip, got, want)
		}
	}
}

func TestParseCIDRs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"", nil, false},
		{"10.0.0.0/8", []string{"10.0.0.0/8"}, false},
		{" 10.0.0.0/8 , 192.168.1.1 ", []string{"10.0.0.0/8", "192.168.1.1/32"}, false},
		{"10.1.2.3/8", []string{"10.0.0.0/8"}, false},
		{"2001:db8::/32,::1", []string{"2001:db8::/32", "::1/128"}, false},
		{"garbage", nil, true},
		{"10.0.0.0/8, garbage", nil, true},
		{"10.0.0.0/33", nil, true},
		{"10.0.0.0/", nil, true},
		{"300.0.0.1", nil, true},
	}
	for _, tc := range tests {
		got, err := parseCIDRs(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseCIDRs(%q) error = %v, want error: %v", tc.in, err, tc.wantErr)
			continue
		}
		var gotStrings []string
		for _, p := range got {
			gotStrings = append(gotStrings, p.String())
		}
		if !tc.wantErr && !slices.Equal(gotStrings, tc.want) {
			t.Errorf("parseCIDRs(%q) = %v, want %v", tc.in, gotStrings, tc.want)
		}
	}
}
