//go:build wip_mail

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
	"errors"
	"io"
	"math/big"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/http"
	"net/mail"
	"net/textproto"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Mail tests talk to smtpServer, a small SMTP server on a real socket written here.

// waitLimit bounds every wait for the SMTP server, only so that a broken run fails instead of
// hanging; nothing is measured against it.
const waitLimit = 30 * time.Second

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

type smtpMessage struct {
	from string   // the MAIL argument
	to   []string // the RCPT arguments
	data string   // as received, dot-unstuffed, CRLF line ends kept
}

type smtpServer struct {
	opts     smtpOptions
	host     string
	port     int
	tls      *tls.Config
	ctx      context.Context // done when the test ends
	accepted chan struct{}   // a value per connection accepted
	sessions chan smtpSession
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
		accepted: make(chan struct{}, 16), sessions: make(chan smtpSession, 16),
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
			s.accepted <- struct{}{}
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

// mailConfig is an smtp backend configuration for this server.
func (s *smtpServer) mailConfig() mailConfig {
	return mailConfig{backend: mailSMTP, server: s.host, port: s.port, sender: "usermgmt@example.com", timeout: waitLimit}
}

// nextSession waits for a connection to end and returns what the server saw on it.
func (s *smtpServer) nextSession(t *testing.T) smtpSession {
	t.Helper()
	select {
	case sess := <-s.sessions:
		return sess
	case <-time.After(waitLimit):
		t.Fatal("the SMTP server saw no complete session")
		return smtpSession{}
	}
}

// serve speaks SMTP on one connection until QUIT, an error, or the end of the test.
func (s *smtpServer) serve(conn net.Conn) (sess smtpSession) {
	defer func() { conn.Close() }()
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()
	if s.opts.stall != nil {
		select {
		case <-s.opts.stall:
		case <-s.ctx.Done():
			return sess
		}
	}
	if s.opts.implicitTLS {
		conn = tls.Server(conn, s.tls)
	}
	tp := textproto.NewConn(conn)
	if reply, ok := s.opts.refuse["GREETING"]; ok {
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
		if reply, ok := s.opts.refuse[verb]; ok {
			_ = tp.PrintfLine("%s", reply)
			continue
		}
		switch verb {
		case "EHLO":
			lines := []string{"smtp.test", "AUTH PLAIN"}
			if s.opts.startTLS {
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
			if !s.opts.startTLS {
				_ = tp.PrintfLine("502 5.5.1 not offered")
				continue
			}
			_ = tp.PrintfLine("220 2.0.0 go ahead")
			tlsConn := tls.Server(conn, s.tls)
			if err := tlsConn.Handshake(); err != nil {
				return sess
			}
			conn, tp = tlsConn, textproto.NewConn(tlsConn)
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
			if reply, ok := s.opts.refuse["DOT"]; ok {
				_ = tp.PrintfLine("%s", reply)
				continue
			}
			msg.data = data.String()
			sess.messages = append(sess.messages, msg)
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

// selfSignedTLS is a server configuration with a certificate for 127.0.0.1 that no client
// trusts.
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

// readMail parses a received message and returns it with its decoded body.
func readMail(t *testing.T, data string) (*mail.Message, string) {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(data))
	if err != nil {
		t.Fatalf("received message does not parse: %v\n%s", err, data)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil {
		t.Fatalf("body is not quoted-printable: %v", err)
	}
	return m, string(body)
}

var mailedToken = regexp.MustCompile(`/api/auth/reset-password/([A-Za-z0-9_-]{43})\b`)

func requestReset(t *testing.T, env *testEnv, email string) response {
	t.Helper()
	r := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": email}).expect(t, http.StatusOK)
	if got := r.json(t); got["message"] != resetRequestReply || got["token"] != nil {
		t.Errorf("reply %v, want only the standard message", got)
	}
	return r
}

// TestPasswordResetMailOverSMTP follows a reset from the request through the mail server to
// the new password.
func TestPasswordResetMailOverSMTP(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, func(c *config) { c.mail = srv.mailConfig() })
	env.addUser(t, "alice", roleUser)
	requestReset(t, env, "alice@example.com")

	sess := srv.nextSession(t)
	if len(sess.messages) != 1 {
		t.Fatalf("%d messages delivered, want 1; commands: %q", len(sess.messages), sess.commands)
	}
	msg := sess.messages[0]
	if msg.from != "FROM:<usermgmt@example.com>" || len(msg.to) != 1 || msg.to[0] != "TO:<alice@example.com>" {
		t.Errorf("envelope MAIL %q RCPT %q", msg.from, msg.to)
	}
	m, body := readMail(t, msg.data)
	for _, h := range []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version"} {
		if m.Header.Get(h) == "" {
			t.Errorf("no %s header", h)
		}
	}
	if from, to := m.Header.Get("From"), m.Header.Get("To"); from != "usermgmt@example.com" || to != "alice@example.com" {
		t.Errorf("From %q To %q", from, to)
	}
	if _, err := m.Header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	match := mailedToken.FindStringSubmatch(body)
	if match == nil {
		t.Fatalf("no reset link in the body:\n%s", body)
	}
	token := match[1]
	if !strings.Contains(body, "\r\n    "+token+"\r\n") {
		t.Errorf("the body does not show the token on a line of its own:\n%s", body)
	}
	if strings.Contains(env.logs.String(), token) {
		t.Error("the server log holds the reset token")
	}

	env.do(t, "POST", "/api/auth/reset-password/"+token, "", map[string]string{"new_password": "brand-new-pass"}).expect(t, http.StatusOK)
	env.login(t, "alice", "brand-new-pass")
}

// TestPasswordResetSendsNoMail checks that requests for no active account reach no mail server.
func TestPasswordResetSendsNoMail(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, func(c *config) { c.mail = srv.mailConfig() })
	env.addUser(t, "alice", roleUser)
	carol := env.addUser(t, "carol", roleUser)
	if _, err := env.st.updateUser(context.Background(), user{Role: roleAdmin}, carol.ID, userPatch{IsActive: new(false)}); err != nil {
		t.Fatal(err)
	}
	for _, email := range []string{"nobody@example.com", "carol@example.com"} {
		requestReset(t, env, email)
	}
	env.mail.wait()
	select {
	case <-srv.accepted:
		t.Fatalf("the mail server was contacted: %q", srv.nextSession(t).commands)
	default:
	}
	// The same server does receive mail for an active account.
	requestReset(t, env, "alice@example.com")
	if sess := srv.nextSession(t); len(sess.messages) != 1 || sess.messages[0].to[0] != "TO:<alice@example.com>" {
		t.Errorf("session %+v, want one message to alice", sess)
	}
}

// TestPasswordResetReplyDoesNotWaitForMail holds the mail server before its greeting until
// the reply has arrived; the mail is delivered afterwards.
func TestPasswordResetReplyDoesNotWaitForMail(t *testing.T) {
	t.Parallel()
	stall := make(chan struct{})
	release := sync.OnceFunc(func() { close(stall) })
	srv := newSMTPServer(t, smtpOptions{stall: stall})
	env := newTestEnv(t, func(c *config) {
		c.mail = srv.mailConfig()
		c.mail.timeout = 4 * waitLimit // a mailer that blocked the reply would hold it past waitLimit
	})
	t.Cleanup(release)
	env.addUser(t, "alice", roleUser)

	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", env.server.URL+"/api/auth/password-reset-request",
		strings.NewReader(`{"email": "alice@example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("no reply while the mail server stalls: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	select {
	case <-srv.accepted:
	case <-time.After(waitLimit):
		t.Fatal("the mailer never connected")
	}
	release()
	if sess := srv.nextSession(t); len(sess.messages) != 1 {
		t.Errorf("%d messages delivered after the stall, want 1", len(sess.messages))
	}
}

// TestPasswordResetMailFailure: a refusing mail server changes nothing in the reply, and the
// failure is logged without the token.
func TestPasswordResetMailFailure(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{refuse: map[string]string{"RCPT": "550 5.1.1 mailbox unavailable"}})
	env := newTestEnv(t, func(c *config) { c.mail = srv.mailConfig() })
	env.addUser(t, "alice", roleUser)
	requestReset(t, env, "alice@example.com")
	env.mail.wait()
	logs := env.logs.String()
	if !strings.Contains(logs, "mail not sent") || !strings.Contains(logs, "550") {
		t.Errorf("the failure is not logged:\n%s", logs)
	}
	if strings.Contains(logs, "reset-password/") {
		t.Errorf("the log holds the reset link:\n%s", logs)
	}
}

// sendTestMail sends one message through srv with cfg changed by change.
func sendTestMail(srv *smtpServer, change func(*mailConfig)) error {
	cfg := srv.mailConfig()
	if change != nil {
		change(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	return sendSMTP(ctx, cfg, mailMessage{to: "alice@example.com", subject: "Hello", body: "Hello Alice\n"})
}

func TestSendSMTP(t *testing.T) {
	t.Parallel()
	withCredentials := func(c *mailConfig) { c.username, c.password = "mailer", "s3cret" }
	tests := []struct {
		name      string
		refuse    map[string]string
		change    func(*mailConfig)
		wantErr   string // "" for a delivery
		wantCmd   string // a command the server must have seen
		wantAuth  string
		delivered int
	}{
		{name: "delivers", wantCmd: "EHLO localhost", delivered: 1},
		{name: "falls back to HELO", refuse: map[string]string{"EHLO": "502 5.5.1 no EHLO here"}, wantCmd: "HELO localhost", delivered: 1},
		{name: "credentials to a local server", change: withCredentials, wantCmd: "AUTH PLAIN", wantAuth: "\x00mailer\x00s3cret", delivered: 1},
		{name: "greeting refused", refuse: map[string]string{"GREETING": "554 5.3.2 not now"}, wantErr: "554"},
		{name: "credentials refused", refuse: map[string]string{"AUTH": "535 5.7.8 bad credentials"}, change: withCredentials, wantErr: "535"},
		{name: "sender refused", refuse: map[string]string{"MAIL": "451 4.3.0 try again later"}, wantErr: "451"},
		{name: "recipient refused", refuse: map[string]string{"RCPT": "550 5.1.1 no such user"}, wantErr: "550"},
		{name: "data refused", refuse: map[string]string{"DATA": "554 5.5.1 no valid recipients"}, wantErr: "554"},
		{name: "message refused at the end of data", refuse: map[string]string{"DOT": "452 4.3.1 out of storage"}, wantErr: "452"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newSMTPServer(t, smtpOptions{refuse: tt.refuse})
			err := sendTestMail(srv, tt.change)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("sendSMTP: %v, want error %q", err, tt.wantErr)
			}
			sess := srv.nextSession(t)
			if len(sess.messages) != tt.delivered {
				t.Errorf("%d messages delivered, want %d", len(sess.messages), tt.delivered)
			}
			if tt.wantCmd != "" && !hasCommand(sess, tt.wantCmd) {
				t.Errorf("no %q in %q", tt.wantCmd, sess.commands)
			}
			if sess.auth != tt.wantAuth {
				t.Errorf("AUTH PLAIN response %q, want %q", sess.auth, tt.wantAuth)
			}
			if tt.delivered > 0 && !hasCommand(sess, "QUIT") {
				t.Errorf("no QUIT in %q", sess.commands)
			}
		})
	}
}

func hasCommand(sess smtpSession, prefix string) bool {
	for _, c := range sess.commands {
		if strings.HasPrefix(c, prefix) {
			return true
		}
	}
	return false
}

// TestSendSMTPRefusesInsecureDelivery: when TLS is asked for and cannot be had, or credentials
// would cross the network unencrypted, nothing is sent.
func TestSendSMTPRefusesInsecureDelivery(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		opts      smtpOptions
		change    func(*mailConfig)
		wantErr   string
		untrusted bool // the error must be a certificate verification failure
	}{
		{name: "STARTTLS required but not offered", change: func(c *mailConfig) { c.useTLS = true }, wantErr: "STARTTLS"},
		{name: "STARTTLS with an untrusted certificate", opts: smtpOptions{startTLS: true},
			change: func(c *mailConfig) { c.useTLS = true }, untrusted: true},
		{name: "implicit TLS with an untrusted certificate", opts: smtpOptions{implicitTLS: true},
			change: func(c *mailConfig) { c.useSSL = true }, untrusted: true},
		{name: "implicit TLS to a plain server", change: func(c *mailConfig) { c.useSSL = true }},
		// net/smtp exempts only the names localhost, 127.0.0.1 and ::1; 127.0.0.2 stands for
		// any other server, reachable here without DNS.
		{name: "credentials in plain text to a non-local server", opts: smtpOptions{host: "127.0.0.2"},
			change: func(c *mailConfig) { c.username, c.password = "mailer", "s3cret" }, wantErr: "unencrypted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newSMTPServer(t, tt.opts)
			err := sendTestMail(srv, tt.change)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("sendSMTP: %v, want an error mentioning %q", err, tt.wantErr)
			}
			if tt.untrusted && !errors.As(err, new(*tls.CertificateVerificationError)) {
				t.Errorf("sendSMTP: %v, want a certificate verification error", err)
			}
			sess := srv.nextSession(t)
			if len(sess.messages) > 0 || sess.auth != "" || hasCommand(sess, "MAIL") || hasCommand(sess, "AUTH") {
				t.Errorf("the server got mail or credentials: %q", sess.commands)
			}
			if strings.Contains(strings.Join(sess.commands, "\n"), base64.StdEncoding.EncodeToString([]byte("\x00mailer\x00s3cret"))) {
				t.Error("the credentials were sent")
			}
		})
	}
}

func TestFormatMessage(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 3, 1, 12, 30, 45, 0, time.UTC)
	longLine := strings.Repeat("0123456789", 20)
	body := "Bonjour Zoë,\n\nUse this token:\n    " + longLine + "\n=end=\n"
	tests := []struct {
		name, subject string
		encoded       bool // whether the Subject header must be RFC 2047 encoded
	}{
		{"ASCII subject", "Reset your password", false},
		{"non-ASCII subject", "Réinitialisez votre mot de passe ✓", true},
		{"subject with a line break", "Hello\r\nBcc: eve@example.com", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			raw := string(formatMessage("usermgmt@example.com", mailMessage{to: "zoe@example.com", subject: tt.subject, body: body}, now))
			for i := range len(raw) {
				if raw[i] == '\n' && (i == 0 || raw[i-1] != '\r') {
					t.Fatalf("a line ends without CRLF at byte %d:\n%q", i, raw)
				}
			}
			for line := range strings.SplitSeq(raw, "\r\n") {
				if len(line) > 78 {
					t.Errorf("line of %d characters: %q", len(line), line)
				}
			}
			m, decoded := readMail(t, raw)
			header := m.Header.Get("Subject")
			if tt.encoded != strings.HasPrefix(header, "=?utf-8?q?") {
				t.Errorf("Subject header %q, encoded: want %v", header, tt.encoded)
			}
			if got, err := new(mime.WordDecoder).DecodeHeader(header); err != nil || got != tt.subject {
				t.Errorf("Subject decodes to %q (%v), want %q", got, err, tt.subject)
			}
			if len(m.Header) != 8 || m.Header.Get("Bcc") != "" {
				t.Errorf("headers %v, want From, To, Subject, Date, Message-ID, MIME-Version, Content-Type, Content-Transfer-Encoding", m.Header)
			}
			if want := strings.ReplaceAll(body, "\n", "\r\n"); decoded != want {
				t.Errorf("body decodes to %q, want %q", decoded, want)
			}
			if date, err := m.Header.Date(); err != nil || !date.Equal(now) {
				t.Errorf("Date %v (%v), want %v", date, err, now)
			}
			if got := m.Header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type %q", got)
			}
			if id := m.Header.Get("Message-ID"); !regexp.MustCompile(`^<[0-9a-f]{32}@example\.com>$`).MatchString(id) {
				t.Errorf("Message-ID %q", id)
			}
		})
	}
	// Every message gets its own Message-ID.
	ids := map[string]bool{}
	for range 2 {
		m, _ := readMail(t, string(formatMessage("usermgmt@example.com", mailMessage{to: "zoe@example.com", subject: "s", body: "b"}, now)))
		ids[m.Header.Get("Message-ID")] = true
	}
	if len(ids) != 2 {
		t.Errorf("two messages share a Message-ID: %v", ids)
	}
}
