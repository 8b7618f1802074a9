package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/http"
	"net/mail"
	"net/textproto"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
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
type parsedMail struct {
	header     mail.Header
	text, html string
}

// parseMail parses a message as formatMessage writes it, failing the test unless it is
// multipart/alternative with a text/plain and then a text/html part, both UTF-8 in
// quoted-printable, with CRLF line ends throughout.
func parseMail(t *testing.T, data string) parsedMail {
	t.Helper()
	for i := range len(data) {
		if data[i] == '\n' && (i == 0 || data[i-1] != '\r') {
			t.Fatalf("a line ends without CRLF at byte %d:\n%q", i, data)
		}
	}
	for line := range strings.SplitSeq(data, "\r\n") {
		if len(line) > 998 { // RFC 5322 2.1.1
			t.Errorf("line of %d characters: %q", len(line), line)
		}
	}
	m, err := mail.ReadMessage(strings.NewReader(data))
	if err != nil {
		t.Fatalf("received message does not parse: %v\n%s", err, data)
	}
	if v := m.Header.Get("MIME-Version"); v != "1.0" {
		t.Errorf("MIME-Version %q", v)
	}
	mediaType, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mediaType != "multipart/alternative" || params["boundary"] == "" {
		t.Fatalf("Content-Type %q (%v), want multipart/alternative with a boundary", m.Header.Get("Content-Type"), err)
	}
	p := parsedMail{header: m.Header}
	var types []string
	parts := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := parts.NextRawPart() // raw: NextPart would decode and hide the transfer encoding
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the parts: %v", err)
		}
		partType, partParams, err := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if err != nil || !strings.EqualFold(partParams["charset"], "utf-8") {
			t.Errorf("part Content-Type %q (%v), want charset utf-8", part.Header.Get("Content-Type"), err)
		}
		if enc := part.Header.Get("Content-Transfer-Encoding"); enc != "quoted-printable" {
			t.Errorf("%s part: Content-Transfer-Encoding %q, want quoted-printable", partType, enc)
		}
		raw, err := io.ReadAll(part)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(string(raw), "\r\n") {
			if len(line) > 76 { // RFC 2045 6.7
				t.Errorf("%s part: quoted-printable line of %d characters: %q", partType, len(line), line)
			}
		}
		decoded, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(raw)))
		if err != nil || !utf8.Valid(decoded) {
			t.Errorf("%s part is not UTF-8 in quoted-printable (%v): %q", partType, err, raw)
		}
		types = append(types, partType)
		switch partType {
		case "text/plain":
			p.text = string(decoded)
		case "text/html":
			p.html = string(decoded)
		}
	}
	// The last alternative is the preferred one (RFC 2046 5.1.4): the plain text comes first.
	if !slices.Equal(types, []string{"text/plain", "text/html"}) {
		t.Errorf("parts %q, want text/plain then text/html", types)
	}
	return p
}

// crlf gives text the line ends it has on the wire.
func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

var (
	mailedToken     = regexp.MustCompile(`The token is: ([A-Za-z0-9_-]{43})\s`)
	messageIDFormat = regexp.MustCompile(`^<[0-9a-f]{32}@[a-z.]+>$`)
)

// mailToken returns the token stated in a message's text.
func mailToken(t *testing.T, text string) string {
	t.Helper()
	match := mailedToken.FindStringSubmatch(text)
	if match == nil {
		t.Fatalf("no token in the message:\n%s", text)
	}
	return match[1]
}

// outboxRow is a row of mail_outbox.
type outboxRow struct {
	ID            int64      `db:"id"`
	Kind          string     `db:"kind"`
	Recipient     string     `db:"recipient"`
	Data          string     `db:"data"`
	Attempts      int        `db:"attempts"`
	NextAttemptAt time.Time  `db:"next_attempt_at"`
	SentAt        *time.Time `db:"sent_at"`
	FailedAt      *time.Time `db:"failed_at"`
	LastError     *string    `db:"last_error"`
}

// outboxRows returns the outbox in the order it was written.
func outboxRows(t *testing.T, st *store) []outboxRow {
	t.Helper()
	rows, err := st.pool.Query(context.Background(), `SELECT id, kind, recipient, data::text AS data, attempts,
		next_attempt_at, sent_at, failed_at, last_error FROM mail_outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.ID, &r.Kind, &r.Recipient, &r.Data, &r.Attempts, &r.NextAttemptAt, &r.SentAt, &r.FailedAt, &r.LastError); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// startOutbox runs the background worker on st. stop ends it and returns once the message it
// was sending, if any, is finished and recorded; it also runs when the test ends.
func startOutbox(t *testing.T, cfg mailConfig, st *store, logs io.Writer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		runOutbox(ctx, cfg, st, slog.New(slog.NewTextHandler(logs, nil)))
		close(done)
	}()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(smtpWaitLimit):
			t.Error("the outbox worker did not stop")
		}
	})
	t.Cleanup(stop)
	return stop
}

// mailRequestReset asks for a password reset through the API and checks the standard reply.
func mailRequestReset(t *testing.T, env *testEnv, email string) {
	t.Helper()
	r := env.do(t, "POST", "/api/auth/password-reset-request", "", map[string]string{"email": email}).expect(t, http.StatusOK)
	if got := r.json(t); got["message"] != resetRequestReply || len(got) != 1 {
		t.Errorf("reply %v, want only the standard message", got)
	}
}

// TestMailKinds sends one message of each kind through the outbox to the SMTP server and
// checks the envelope, the headers and both parts of each.
func TestMailKinds(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, srv.use, func(c *config) { c.mail.sender = "noreply@usermgmt.test" })

	// Each step queues one or two messages: register (verify_email), reset request
	// (password_reset), change password (password_changed), change email (email_changed to
	// the old address, verify_email to the new).
	r := env.do(t, "POST", "/api/auth/register", "", map[string]string{
		"username": "zoe", "first_name": "Zoë", "last_name": "Åberg", "email": "zoe@example.com", "password": testPassword,
	}).expect(t, http.StatusCreated)
	id := int64(r.json(t)["id"].(float64))
	mailRequestReset(t, env, "zoe@example.com")
	r = env.do(t, "POST", "/api/auth/change-password", env.login(t, "zoe", testPassword),
		map[string]string{"current_password": testPassword, "new_password": "another-password"}).expect(t, http.StatusOK)
	token, _ := r.json(t)["access_token"].(string)
	env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", id), token, map[string]string{"email": "zoe.new@example.com"}).
		expect(t, http.StatusOK)

	rendered := env.deliverMail(t)
	got := srv.delivered()
	want := []struct {
		kind, to string
		contains []string // in both parts
	}{
		{mailVerifyEmail, "zoe@example.com", []string{"Hello Zoë", "zoe@example.com", "24 hours", "/api/auth/verify-email/"}},
		{mailPasswordReset, "zoe@example.com", []string{"Hello Zoë", "zoe", "1 hour", "/api/auth/reset-password/"}},
		{mailPasswordChanged, "zoe@example.com", []string{"Hello Zoë", "was changed"}},
		{mailEmailChanged, "zoe@example.com", []string{"Hello Zoë", "zoe@example.com to zoe.new@example.com"}},
		{mailVerifyEmail, "zoe.new@example.com", []string{"Hello Zoë", "zoe.new@example.com", "/api/auth/verify-email/"}},
	}
	if len(rendered) != len(want) || len(got) != len(want) {
		t.Fatalf("%d messages rendered and %d received, want %d", len(rendered), len(got), len(want))
	}
	ids := map[string]bool{}
	for i, w := range want {
		msg := got[i]
		if msg.from != "FROM:<noreply@usermgmt.test>" || !slices.Equal(msg.to, []string{"TO:<" + w.to + ">"}) {
			t.Errorf("%s: envelope MAIL %q RCPT %q", w.kind, msg.from, msg.to)
		}
		p := parseMail(t, msg.data)
		if from, to := p.header.Get("From"), p.header.Get("To"); from != "noreply@usermgmt.test" || to != w.to {
			t.Errorf("%s: From %q To %q, want noreply@usermgmt.test and %s", w.kind, from, to, w.to)
		}
		// The subjects are ASCII: they go as they are, not RFC 2047 encoded (see TestFormatMessage).
		if subject := p.header.Get("Subject"); subject != mailSubjects[w.kind] {
			t.Errorf("%s: Subject %q, want %q", w.kind, subject, mailSubjects[w.kind])
		}
		if _, err := p.header.Date(); err != nil {
			t.Errorf("%s: Date %q: %v", w.kind, p.header.Get("Date"), err)
		}
		id := p.header.Get("Message-ID")
		if !messageIDFormat.MatchString(id) || !strings.HasSuffix(id, "@usermgmt.test>") || ids[id] {
			t.Errorf("%s: Message-ID %q, want a new <hex@usermgmt.test>", w.kind, id)
		}
		ids[id] = true
		// The parts carry exactly what the templates rendered.
		if p.text != crlf(rendered[i].text) || p.html != crlf(rendered[i].html) {
			t.Errorf("%s: the parts do not decode to the rendered message:\ntext %q\nwant %q\nhtml %q\nwant %q",
				w.kind, p.text, crlf(rendered[i].text), p.html, crlf(rendered[i].html))
		}
		if !strings.HasPrefix(p.html, "<!DOCTYPE html>") {
			t.Errorf("%s: the HTML part is not an HTML document: %q", w.kind, p.html)
		}
		for _, s := range w.contains {
			if !strings.Contains(p.text, s) || !strings.Contains(p.html, s) {
				t.Errorf("%s: %q missing from a part:\n%s\n%s", w.kind, s, p.text, p.html)
			}
		}
	}
}

// TestMailTokensWork follows the tokens of a reset and a verification mail received over
// SMTP back to the API, and checks the links they come with.
func TestMailTokensWork(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, srv.use, func(c *config) {
		c.mail.resetURL = "https://app.example.org/reset/{token}/now"
		c.mail.verifyURL = "https://app.example.org/verify/{token}"
	})
	env.do(t, "POST", "/api/auth/register", "", map[string]string{
		"username": "alice", "first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com", "password": testPassword,
	}).expect(t, http.StatusCreated)
	mailRequestReset(t, env, "alice@example.com")
	env.deliverMail(t)
	got := srv.delivered()
	if len(got) != 2 {
		t.Fatalf("%d messages received, want the verification and the reset", len(got))
	}
	verify, reset := parseMail(t, got[0].data), parseMail(t, got[1].data)

	t.Run("reset", func(t *testing.T) {
		token := mailToken(t, reset.text)
		link := "https://app.example.org/reset/" + token + "/now"
		curl := "curl -X POST http://usermgmt.test/api/auth/reset-password/" + token
		if !strings.Contains(reset.text, "\r\n    "+link+"\r\n") || !strings.Contains(reset.text, curl) {
			t.Errorf("the text does not hold the link %s on a line of its own and the curl line:\n%s", link, reset.text)
		}
		if !strings.Contains(reset.html, `href="`+link+`"`) || !strings.Contains(reset.html, curl) {
			t.Errorf("the HTML does not link to %s or lacks the curl line:\n%s", link, reset.html)
		}
		if strings.Contains(env.logs.String(), token) {
			t.Error("the server log holds the reset token")
		}
		env.do(t, "POST", "/api/auth/reset-password/"+token, "", map[string]string{"new_password": "brand-new-pass"}).
			expect(t, http.StatusOK)
		env.login(t, "alice", "brand-new-pass")
		env.do(t, "POST", "/api/auth/login", "", map[string]string{"username": "alice", "password": testPassword}).
			expect(t, http.StatusUnauthorized)
	})
	t.Run("verification", func(t *testing.T) {
		token := mailToken(t, verify.text)
		link := "https://app.example.org/verify/" + token
		curl := "curl -X POST http://usermgmt.test/api/auth/verify-email/" + token
		if !strings.Contains(verify.text, "\r\n    "+link+"\r\n") || !strings.Contains(verify.text, curl) {
			t.Errorf("the text does not hold the link %s on a line of its own and the curl line:\n%s", link, verify.text)
		}
		if !strings.Contains(verify.html, `href="`+link+`"`) {
			t.Errorf("the HTML does not link to %s:\n%s", link, verify.html)
		}
		u, err := env.st.userByLogin(context.Background(), "alice")
		if err != nil || u.EmailVerified {
			t.Fatalf("before verification: %+v, %v", u, err)
		}
		env.do(t, "POST", "/api/auth/verify-email/"+token, "", nil).expect(t, http.StatusOK)
		me := env.do(t, "GET", "/api/users/me", env.tokenFor(t, u), nil).expect(t, http.StatusOK).json(t)
		if me["email_verified"] != true {
			t.Errorf("after verification: %v", me)
		}
	})
}

// TestPasswordResetMailOnlyForActiveAccounts: requests for no active account queue nothing;
// the same server does receive mail for an active one.
func TestPasswordResetMailOnlyForActiveAccounts(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, srv.use)
	env.addUser(t, "alice", roleUser)
	carol := env.addUser(t, "carol", roleUser)
	if _, err := env.st.updateUser(context.Background(), user{Role: roleAdmin}, carol.ID, userPatch{IsActive: new(false)}, env.cfg.verifyTTL); err != nil {
		t.Fatal(err)
	}
	env.deliverMail(t) // the verification mails of registration
	before := len(srv.delivered())

	for _, email := range []string{"nobody@example.com", "carol@example.com"} {
		mailRequestReset(t, env, email)
	}
	if sent := env.deliverMail(t); len(sent) != 0 {
		t.Errorf("mail sent for no active account: %+v", sent)
	}
	mailRequestReset(t, env, "alice@example.com")
	env.deliverMail(t)
	got := srv.delivered()[before:]
	if len(got) != 1 || got[0].to[0] != "TO:<alice@example.com>" || parseMail(t, got[0].data).header.Get("Subject") != mailSubjects[mailPasswordReset] {
		t.Errorf("received %+v, want one reset mail to alice", got)
	}
}

// TestOutboxRetry: a message the server refuses is retried after a back-off and sent once the
// server recovers; one refused maxAttempts times is given up with its last error. Either way
// the data (with its token) is emptied when the message is done with.
func TestOutboxRetry(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{refuse: map[string]string{"MAIL": "451 4.3.0 try again later"}})
	env := newTestEnv(t, srv.use)
	env.addUser(t, "alice", roleUser) // queues a verification mail

	if sent := env.deliverMail(t); len(sent) != 0 {
		t.Fatalf("sent %d messages through a refusing server", len(sent))
	}
	row := outboxRows(t, env.st)[0]
	if row.Attempts != 1 || row.LastError == nil || !strings.Contains(*row.LastError, "451") ||
		!row.NextAttemptAt.After(env.clock.Now()) || row.SentAt != nil || row.FailedAt != nil || row.Data == "{}" {
		t.Fatalf("after a refusal: %+v (last error %v), want attempts 1, the 451, a later attempt, the data kept", row, deref(row.LastError))
	}

	srv.refuse("MAIL", "")
	if sent := env.deliverMail(t); len(sent) != 0 {
		t.Errorf("sent %d messages before the back-off elapsed", len(sent))
	}
	env.clock.Advance(row.NextAttemptAt.Sub(env.clock.Now()))
	if sent := env.deliverMail(t); len(sent) != 1 || len(srv.delivered()) != 1 {
		t.Fatalf("sent %d (received %d) once due and the server recovered, want 1", len(sent), len(srv.delivered()))
	}
	row = outboxRows(t, env.st)[0]
	if row.SentAt == nil || row.Attempts != 2 || row.LastError != nil || row.Data != "{}" {
		t.Errorf("after sending: %+v (last error %v), want sent, attempts 2, no error, data {}", row, deref(row.LastError))
	}

	t.Run("given up", func(t *testing.T) {
		srv.refuse("RCPT", "550 5.1.1 no such user")
		env.addUser(t, "bob", roleUser)
		var delays []time.Duration
		for attempt := 1; attempt <= env.cfg.mail.maxAttempts; attempt++ {
			if sent := env.deliverMail(t); len(sent) != 0 {
				t.Fatalf("attempt %d: sent through a refusing server", attempt)
			}
			row = outboxRows(t, env.st)[1]
			if row.Attempts != attempt {
				t.Fatalf("attempt %d: row has attempts %d", attempt, row.Attempts)
			}
			if row.FailedAt == nil {
				delays = append(delays, row.NextAttemptAt.Sub(env.clock.Now()))
				env.clock.Advance(delays[len(delays)-1])
			}
		}
		if row.FailedAt == nil || row.SentAt != nil || row.LastError == nil || !strings.Contains(*row.LastError, "550") || row.Data != "{}" {
			t.Errorf("after %d refusals: %+v (last error %v), want failed with the 550 and data {}",
				env.cfg.mail.maxAttempts, row, deref(row.LastError))
		}
		if len(delays) != 2 || delays[1] <= delays[0] || delays[0] <= 0 {
			t.Errorf("back-off delays %v, want two, growing", delays)
		}
		env.clock.Advance(24 * time.Hour)
		env.deliverMail(t)
		if row = outboxRows(t, env.st)[1]; row.Attempts != env.cfg.mail.maxAttempts {
			t.Errorf("a failed message was tried again: attempts %d", row.Attempts)
		}
		if n := len(srv.delivered()); n != 1 {
			t.Errorf("the server received %d messages, want only alice's", n)
		}
	})
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// TestOutboxWorkerLogsFailures: the background worker logs a refused message with the
// server's reply and never with its token.
func TestOutboxWorkerLogsFailures(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{refuse: map[string]string{"RCPT": "550 5.1.1 mailbox unavailable"}})
	env := newTestEnv(t, srv.use)
	env.addUser(t, "alice", roleUser)
	mailRequestReset(t, env, "alice@example.com")
	logs := &syncBuffer{}
	stop := startOutbox(t, env.cfg.mail, env.st, logs)
	srv.nextSession(t) // the verification mail
	srv.nextSession(t) // the reset mail
	stop()

	text := logs.String()
	if strings.Count(text, "mail not sent") != 2 || !strings.Contains(text, "550") {
		t.Errorf("the two failures are not logged with the reply:\n%s", text)
	}
	for _, row := range outboxRows(t, env.st) {
		var d mailData
		if err := json.Unmarshal([]byte(row.Data), &d); err != nil || d.Sealed == "" {
			t.Fatalf("outbox data %q (%v), want a sealed token kept for the retry", row.Data, err)
		}
		var err error
		if d.Token, err = env.st.sealer.open(d.Sealed); err != nil {
			t.Fatalf("opening the sealed token: %v", err)
		}
		if strings.Contains(row.Data, d.Token) {
			t.Errorf("the outbox holds the %s mail's token in clear: %s", row.Kind, row.Data)
		}
		if strings.Contains(text, d.Token) {
			t.Errorf("the log holds the token of the %s mail:\n%s", row.Kind, text)
		}
	}
}

// TestOutboxTwoWorkers: two instances on one database, sending at once, send every message
// exactly once.
func TestOutboxTwoWorkers(t *testing.T) {
	t.Parallel()
	const messages = 20
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, srv.use)
	for i := range messages {
		env.addUser(t, fmt.Sprintf("user%02d", i), roleUser)
	}
	other, err := openStore(context.Background(), env.cfg.databaseURL, env.cfg.keys, env.clock.Now, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer other.close()

	logger := slog.New(slog.NewTextHandler(env.logs, nil))
	sendOne := func(m queuedMail) error {
		msg, err := render(env.cfg.mail, m.Kind, m.Recipient, m.Data)
		if err != nil {
			return err
		}
		return deliver(context.Background(), env.cfg.mail, logger, msg)
	}
	var wg sync.WaitGroup
	for _, st := range []*store{env.st, other} {
		wg.Go(func() {
			for {
				found, err := st.deliverNext(context.Background(), env.cfg.mail.maxAttempts, sendOne)
				if err != nil {
					t.Errorf("deliverNext: %v", err)
					return
				}
				if !found {
					return
				}
			}
		})
	}
	wg.Wait()

	counts := map[string]int{}
	for _, m := range srv.delivered() {
		counts[strings.Join(m.to, ",")]++
	}
	for i := range messages {
		if to := fmt.Sprintf("TO:<user%02d@example.com>", i); counts[to] != 1 {
			t.Errorf("%s received %d times, want once", to, counts[to])
		}
	}
	if n := len(srv.delivered()); n != messages {
		t.Errorf("the server received %d messages, want %d", n, messages)
	}
	for _, row := range outboxRows(t, env.st) {
		if row.SentAt == nil || row.Attempts != 1 {
			t.Errorf("row %+v, want sent at the first attempt", row)
		}
	}
}

// TestOutboxSurvivesRestart: mail queued by an instance that stopped before sending it is
// sent by the worker of the next one.
func TestOutboxSurvivesRestart(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, srv.use)
	env.addUser(t, "alice", roleUser)
	mailRequestReset(t, env, "alice@example.com")
	env.server.Close()
	env.st.close()
	if srv.contacted() {
		t.Fatal("mail was sent before the restart")
	}

	st, err := openStore(context.Background(), env.cfg.databaseURL, env.cfg.keys, env.clock.Now, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	stop := startOutbox(t, env.cfg.mail, st, env.logs)
	var subjects []string
	for range 2 {
		for _, m := range srv.nextSession(t).messages {
			subjects = append(subjects, parseMail(t, m.data).header.Get("Subject"))
		}
	}
	stop()
	if want := []string{mailSubjects[mailVerifyEmail], mailSubjects[mailPasswordReset]}; !slices.Equal(subjects, want) {
		t.Errorf("received %q after the restart, want %q", subjects, want)
	}
	for _, row := range outboxRows(t, st) {
		if row.SentAt == nil {
			t.Errorf("row %+v not marked sent", row)
		}
	}
}

// TestOutboxTLS sends through the outbox with each TLS setting: a message goes only over the
// encryption asked for, and credentials only over TLS (or to localhost); a refusal is recorded
// in the row's last_error.
func TestOutboxTLS(t *testing.T) {
	t.Parallel()
	credentials := "\x00mailer\x00s3cret"
	withCredentials := func(c *mailConfig) { c.username, c.password = "mailer", "s3cret" }
	tests := []struct {
		name     string
		opts     smtpOptions
		change   func(*mailConfig)
		wantErr  string // in last_error; "" for a delivery
		wantAuth string
	}{
		{name: "STARTTLS required but not offered", change: func(c *mailConfig) { c.useTLS = true }, wantErr: "STARTTLS"},
		{name: "STARTTLS with the test certificate", opts: smtpOptions{startTLS: true},
			change: func(c *mailConfig) { c.useTLS, c.insecureTLS = true, true }},
		{name: "STARTTLS with an untrusted certificate", opts: smtpOptions{startTLS: true},
			change: func(c *mailConfig) { c.useTLS = true }, wantErr: "failed to verify certificate"},
		{name: "implicit TLS with the test certificate", opts: smtpOptions{implicitTLS: true},
			change: func(c *mailConfig) { c.useSSL, c.insecureTLS = true, true }},
		{name: "implicit TLS with an untrusted certificate", opts: smtpOptions{implicitTLS: true},
			change: func(c *mailConfig) { c.useSSL = true }, wantErr: "failed to verify certificate"},
		{name: "implicit TLS to a plain server", change: func(c *mailConfig) { c.useSSL, c.insecureTLS = true, true },
			wantErr: "does not look like a TLS handshake"},
		// net/smtp exempts only the names localhost, 127.0.0.1 and ::1; 127.0.0.2 stands for
		// any other server, reachable here without DNS.
		{name: "credentials in plain text to a non-local server", opts: smtpOptions{host: "127.0.0.2"},
			change: withCredentials, wantErr: "unencrypted"},
		{name: "credentials over STARTTLS to a non-local server", opts: smtpOptions{host: "127.0.0.2", startTLS: true},
			change: func(c *mailConfig) { withCredentials(c); c.useTLS, c.insecureTLS = true, true }, wantAuth: credentials},
		{name: "credentials over implicit TLS to a non-local server", opts: smtpOptions{host: "127.0.0.2", implicitTLS: true},
			change: func(c *mailConfig) { withCredentials(c); c.useSSL, c.insecureTLS = true, true }, wantAuth: credentials},
		{name: "credentials in plain text to localhost", change: withCredentials, wantAuth: credentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newSMTPServer(t, tt.opts)
			env := newTestEnv(t, srv.use, func(c *config) { tt.change(&c.mail) })
			env.addUser(t, "alice", roleUser)
			sent := env.deliverMail(t)
			row := outboxRows(t, env.st)[0]
			sess := srv.nextSession(t)
			if tt.wantErr != "" {
				if len(sent) != 0 || row.SentAt != nil || row.LastError == nil || !strings.Contains(*row.LastError, tt.wantErr) {
					t.Errorf("sent %d, row %+v, last error %q; want not sent, error mentioning %q", len(sent), row, deref(row.LastError), tt.wantErr)
				}
				if len(srv.delivered()) > 0 || sess.has("MAIL") || sess.has("AUTH") || sess.auth != "" {
					t.Errorf("the server got mail or credentials: %q", sess.commands)
				}
				if strings.Contains(strings.Join(sess.commands, "\n"), base64.StdEncoding.EncodeToString([]byte(credentials))) {
					t.Error("the credentials were sent")
				}
				return
			}
			if len(sent) != 1 || row.SentAt == nil || len(srv.delivered()) != 1 {
				t.Fatalf("sent %d, received %d, row %+v, last error %q; want delivered", len(sent), len(srv.delivered()), row, deref(row.LastError))
			}
			if encrypted := tt.opts.startTLS || tt.opts.implicitTLS; srv.delivered()[0].encrypted != encrypted {
				t.Errorf("delivered encrypted: %v, want %v", srv.delivered()[0].encrypted, encrypted)
			}
			if sess.auth != tt.wantAuth {
				t.Errorf("AUTH PLAIN response %q, want %q", sess.auth, tt.wantAuth)
			}
		})
	}
}

// TestResetRequestDoesNotWaitForSMTP: while the worker is stuck on a mail server that holds
// back its greeting, a reset request still gets its reply; the mail goes once the server
// answers.
func TestResetRequestDoesNotWaitForSMTP(t *testing.T) {
	t.Parallel()
	stall := make(chan struct{})
	release := sync.OnceFunc(func() { close(stall) })
	srv := newSMTPServer(t, smtpOptions{stall: stall})
	env := newTestEnv(t, srv.use, func(c *config) {
		// Longer than the request may take: a reply that waited for SMTP would not arrive.
		c.mail.commandTimeout, c.mail.totalTimeout = 4*smtpWaitLimit, 4*smtpWaitLimit
	})
	env.addUser(t, "alice", roleUser) // its verification mail keeps the worker busy
	stop := startOutbox(t, env.cfg.mail, env.st, env.logs)
	t.Cleanup(release) // before stop: a stalled worker cannot stop
	select {
	case <-srv.accepted:
	case <-time.After(smtpWaitLimit):
		t.Fatal("the worker never connected")
	}

	ctx, cancel := context.WithTimeout(context.Background(), smtpWaitLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", env.server.URL+"/api/auth/password-reset-request",
		strings.NewReader(`{"email": "alice@example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	r := send(t, req).expect(t, http.StatusOK)
	if msg := r.message(t); msg != resetRequestReply {
		t.Errorf("message %q", msg)
	}
	rows := outboxRows(t, env.st)
	if len(rows) != 2 || rows[1].Kind != mailPasswordReset || rows[1].SentAt != nil {
		t.Fatalf("outbox %+v, want the reset mail queued behind the stalled one", rows)
	}

	release()
	for range 2 {
		if sess := srv.nextSession(t); len(sess.messages) != 1 {
			t.Errorf("%d messages in a session after the stall, want 1", len(sess.messages))
		}
	}
	stop()
	for _, row := range outboxRows(t, env.st) {
		if row.SentAt == nil {
			t.Errorf("row %+v not sent after the stall", row)
		}
	}
}

// sendTestMail sends one message through srv with cfg changed by change.
func sendTestMail(srv *smtpServer, change func(*mailConfig)) error {
	cfg := srv.mailConfig()
	if change != nil {
		change(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), smtpWaitLimit)
	defer cancel()
	return sendSMTP(ctx, cfg, mailMessage{to: "alice@example.com", subject: "Hello", text: "Hello Alice\n", html: "<p>Hello Alice</p>\n"})
}

// TestSendSMTP holds sendSMTP to the protocol: a refusal at any step is an error naming the
// server's reply, and nothing is delivered.
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
			if tt.wantCmd != "" && !sess.has(tt.wantCmd) {
				t.Errorf("no %q in %q", tt.wantCmd, sess.commands)
			}
			if sess.auth != tt.wantAuth {
				t.Errorf("AUTH PLAIN response %q, want %q", sess.auth, tt.wantAuth)
			}
			if tt.delivered > 0 && !sess.has("QUIT") {
				t.Errorf("no QUIT in %q", sess.commands)
			}
		})
	}
}

// TestSendSMTPTimesOut: a server that never greets cannot hold a sender past the command or
// the total timeout.
func TestSendSMTPTimesOut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*mailConfig)
	}{
		{"command timeout", func(c *mailConfig) { c.commandTimeout = 100 * time.Millisecond }},
		{"total timeout", func(c *mailConfig) { c.totalTimeout = 100 * time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newSMTPServer(t, smtpOptions{stall: make(chan struct{})}) // released when the test ends
			err := sendTestMail(srv, func(c *mailConfig) {
				c.commandTimeout, c.totalTimeout = smtpWaitLimit, smtpWaitLimit
				tt.change(c)
			})
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("sendSMTP to a silent server: %v, want a deadline error", err)
			}
		})
	}
}

func TestFormatMessage(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 3, 1, 12, 30, 45, 0, time.UTC)
	longLine := strings.Repeat("0123456789", 20)
	text := "Bonjour Zoë,\n\nUse this token:\n    " + longLine + "\n=end=\n"
	html := "<p>Bonjour Zoë,</p>\n<p>" + longLine + "</p>\n<p>=end=</p>\n"
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
			raw := string(formatMessage("usermgmt@example.com", mailMessage{to: "zoe@example.com", subject: tt.subject, text: text, html: html}, now))
			p := parseMail(t, raw)
			header := p.header.Get("Subject")
			if tt.encoded != strings.HasPrefix(header, "=?utf-8?q?") {
				t.Errorf("Subject header %q, encoded: want %v", header, tt.encoded)
			}
			if got, err := new(mime.WordDecoder).DecodeHeader(header); err != nil || got != tt.subject {
				t.Errorf("Subject decodes to %q (%v), want %q", got, err, tt.subject)
			}
			if len(p.header) != 7 || p.header.Get("Bcc") != "" {
				t.Errorf("headers %v, want From, To, Subject, Date, Message-ID, MIME-Version, Content-Type", p.header)
			}
			if from, to := p.header.Get("From"), p.header.Get("To"); from != "usermgmt@example.com" || to != "zoe@example.com" {
				t.Errorf("From %q To %q", from, to)
			}
			if p.text != crlf(text) || p.html != crlf(html) {
				t.Errorf("parts decode to %q and %q, want %q and %q", p.text, p.html, crlf(text), crlf(html))
			}
			if date, err := p.header.Date(); err != nil || !date.Equal(now) {
				t.Errorf("Date %v (%v), want %v", date, err, now)
			}
			if id := p.header.Get("Message-ID"); !messageIDFormat.MatchString(id) || !strings.HasSuffix(id, "@example.com>") {
				t.Errorf("Message-ID %q", id)
			}
		})
	}
	// Every message gets its own Message-ID.
	ids := map[string]bool{}
	for range 2 {
		p := parseMail(t, string(formatMessage("usermgmt@example.com", mailMessage{to: "zoe@example.com", subject: "s", text: "b", html: "b"}, now)))
		ids[p.header.Get("Message-ID")] = true
	}
	if len(ids) != 2 {
		t.Errorf("two messages share a Message-ID: %v", ids)
	}
}
