package main

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Mail tests talk to smtpServer, a small SMTP server on a real socket written here, and follow
// messages from the change that queues them through the outbox to that server.

// smtpWaitLimit bounds every wait for the SMTP server or the worker, only so that a broken run
// fails instead of hanging; nothing is measured against it.
const smtpWaitLimit = 30 * time.Second

type smtpOptions struct {
	host        string            // address to listen on; 127.0.0.1 when empty
	startTLS    bool              // advertise STARTTLS and carry it out with a self-signed certificate
	implicitTLS bool              // speak TLS from the first byte, with a self-signed certificate
	refuse      map[string]string // command verb, or "GREETING" or "DOT" (end of data) -> refusing reply
	stall       chan struct{}     // when set, the greeting waits until it is closed
}

// smtpSession is what the server saw on one connection.
type smtpSession struct {
	commands []string // every command line, in order
	auth     string   // decoded AUTH PLAIN response
	messages []smtpMessage
}

// has reports whether a command line starting with prefix was seen.
func (s smtpSession) has(prefix string) bool {
	return slices.ContainsFunc(s.commands, func(c string) bool { return strings.HasPrefix(c, prefix) })
}

type smtpMessage struct {
	from      string   // the MAIL argument
	to        []string // the RCPT arguments
	data      string   // as received, dot-unstuffed, CRLF line ends kept
	encrypted bool     // whether the connection was TLS when the message was accepted
}

type smtpServer struct {
	opts     smtpOptions
	host     string
	port     int
	tls      *tls.Config
	ctx      context.Context // done when the test ends
	accepted chan struct{}   // a value per connection accepted (dropped when full)
	sessions chan smtpSession

	mu       sync.Mutex
	refusals map[string]string
	received []smtpMessage // every message accepted, in order
}

// newSMTPServer starts a server that runs until the test ends.
func newSMTPServer(t *testing.T, opts smtpOptions) *smtpServer {
	t.Helper()
	host := cmp.Or(opts.host, "127.0.0.1")
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("SMTP server: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &smtpServer{
		opts: opts, host: host, port: ln.Addr().(*net.TCPAddr).Port, tls: selfSignedTLS(t), ctx: ctx,
		accepted: make(chan struct{}, 64), sessions: make(chan smtpSession, 64), refusals: map[string]string{},
	}
	for verb, reply := range opts.refuse {
		s.refuse(verb, reply)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case s.accepted <- struct{}{}:
			default:
			}
			wg.Go(func() {
				sess := s.serve(conn)
				select {
				case s.sessions <- sess:
				case <-ctx.Done():
				}
			})
		}
	})
	return s
}

// refuse makes the server answer verb (a command, "GREETING" or "DOT") with reply from now
// on; an empty reply lifts the refusal.
func (s *smtpServer) refuse(verb, reply string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reply == "" {
		delete(s.refusals, verb)
		return
	}
	s.refusals[verb] = reply
}

func (s *smtpServer) refusal(verb string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	reply, ok := s.refusals[verb]
	return reply, ok
}

// delivered returns every message the server has accepted so far.
func (s *smtpServer) delivered() []smtpMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.received)
}

// mailConfig is the test configuration's mail settings with the smtp backend and this server.
func (s *smtpServer) mailConfig() mailConfig {
	c := testConfig("").mail
	c.backend, c.server, c.port = mailSMTP, s.host, s.port
	return c
}

// use is a newTestEnv change that sends the service's mail to this server.
func (s *smtpServer) use(c *config) { c.mail = s.mailConfig() }

// nextSession waits for a connection to end and returns what the server saw on it.
func (s *smtpServer) nextSession(t *testing.T) smtpSession {
	t.Helper()
	select {
	case sess := <-s.sessions:
		return sess
	case <-time.After(smtpWaitLimit):
		t.Fatal("the SMTP server saw no complete session")
		return smtpSession{}
	}
}

// contacted reports whether anyone has connected since the last call.
func (s *smtpServer) contacted() bool {
	select {
	case <-s.accepted:
		return true
	default:
		return false
	}
}

// serve speaks SMTP on one connection until QUIT, an error, or the end of the test.
func (s *smtpServer) serve(conn net.Conn) (sess smtpSession) {
	raw := conn
	defer raw.Close()
	stop := context.AfterFunc(s.ctx, func() { raw.Close() })
	defer stop()
	if s.opts.stall != nil {
		select {
		case <-s.opts.stall:
		case <-s.ctx.Done():
			return sess
		}
	}
	encrypted := s.opts.implicitTLS
	if encrypted {
		conn = tls.Server(conn, s.tls)
	}
	tp := textproto.NewConn(conn)
	if reply, ok := s.refusal("GREETING"); ok {
		_ = tp.PrintfLine("%s", reply)
		return sess
	}
	_ = tp.PrintfLine("220 smtp.test ESMTP ready")
	var msg smtpMessage
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return sess
		}
		sess.commands = append(sess.commands, line)
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		if reply, ok := s.refusal(verb); ok {
			_ = tp.PrintfLine("%s", reply)
			continue
		}
		switch verb {
		case "EHLO":
			lines := []string{"smtp.test", "AUTH PLAIN"}
			if s.opts.startTLS && !encrypted {
				lines = append(lines, "STARTTLS")
			}
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				_ = tp.PrintfLine("250%s%s", sep, l)
			}
		case "HELO":
			_ = tp.PrintfLine("250 smtp.test")
		case "STARTTLS":
			if !s.opts.startTLS || encrypted {
				_ = tp.PrintfLine("502 5.5.1 not offered")
				continue
			}
			_ = tp.PrintfLine("220 2.0.0 go ahead")
			tlsConn := tls.Server(conn, s.tls)
			if err := tlsConn.Handshake(); err != nil {
				return sess
			}
			conn, tp, encrypted = tlsConn, textproto.NewConn(tlsConn), true
		case "AUTH":
			_, resp, _ := strings.Cut(arg, " ")
			b, _ := base64.StdEncoding.DecodeString(resp)
			sess.auth = string(b)
			_ = tp.PrintfLine("235 2.7.0 accepted")
		case "MAIL":
			msg = smtpMessage{from: arg}
			_ = tp.PrintfLine("250 2.1.0 ok")
		case "RCPT":
			msg.to = append(msg.to, arg)
			_ = tp.PrintfLine("250 2.1.5 ok")
		case "DATA":
			_ = tp.PrintfLine("354 end with .")
			var data strings.Builder
			for {
				l, err := tp.R.ReadString('\n')
				if err != nil {
					return sess
				}
				if l == ".\r\n" {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			if reply, ok := s.refusal("DOT"); ok {
				_ = tp.PrintfLine("%s", reply)
				continue
			}
			msg.data, msg.encrypted = data.String(), encrypted
			sess.messages = append(sess.messages, msg)
			s.mu.Lock()
			s.received = append(s.received, msg)
			s.mu.Unlock()
			msg = smtpMessage{}
			_ = tp.PrintfLine("250 2.0.0 queued")
		case "RSET":
			msg = smtpMessage{}
			_ = tp.PrintfLine("250 2.0.0 ok")
		case "NOOP":
			_ = tp.PrintfLine("250 2.0.0 ok")
		case "QUIT":
			_ = tp.PrintfLine("221 2.0.0 bye")
			return sess
		default:
			_ = tp.PrintfLine("500 5.5.2 unknown command")
		}
	}
}

// selfSignedTLS is a server configuration with a certificate for 127.0.0.1 and 127.0.0.2
// that no client trusts.
func selfSignedTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "smtp.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// parsedMail is a received message: its header and its two parts, decoded.
