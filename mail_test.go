package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/http"
	"net/mail"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

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

// outboxRow is a row of mail_outbox.
// TestMailKinds sends one message of each kind through the outbox to the SMTP server and
// checks the envelope, the headers and both parts of each.
func TestMailKinds(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	env := newTestEnv(t, srv.use, func(c *config) { c.mail.sender = mail.Address{Address: "noreply@usermgmt.test"} })

	// Each step queues one or two messages: register (verify_email), reset request
	// (password_reset), change password (password_changed), change email (email_changed to
	// the old address, verify_email to the new), an admin's user without a password (invite).
	r := env.do(t, "POST", "/api/auth/register", "", map[string]string{
		"username": "zoe", "first_name": "Zoë", "last_name": "Åberg", "email": "zoe@example.com", "password": testPassword,
	}).expect(t, http.StatusCreated)
	id := int64(r.json(t)["id"].(float64))
	requestReset(t, env, "zoe@example.com")
	r = env.do(t, "POST", "/api/auth/change-password", env.login(t, "zoe", testPassword),
		map[string]string{"current_password": testPassword, "new_password": "another-password"}).expect(t, http.StatusOK)
	token, _ := r.json(t)["access_token"].(string)
	env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", id), token, map[string]string{"email": "zoe.new@example.com"}).
		expect(t, http.StatusOK)
	rootID, err := env.st.createFirstAdmin(context.Background(), newUser{"root", "Root", "Admin", "root@example.com"}, "")
	if err != nil {
		t.Fatal(err)
	}
	env.do(t, "POST", "/api/admin/users", env.tokenFor(t, user{ID: rootID, Username: "root"}), map[string]string{
		"username": "ann", "first_name": "Änn", "last_name": "Åberg", "email": "ann@example.com",
	}).expect(t, http.StatusCreated)

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
		{mailInvite, "ann@example.com", []string{"Hello Änn", "ann", "ann@example.com", "72 hours", "/api/auth/accept-invite/"}},
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
	requestReset(t, env, "alice@example.com")
	env.deliverMail(t)
	got := srv.delivered()
	if len(got) != 2 {
		t.Fatalf("%d messages received, want the verification and the reset", len(got))
	}
	verify, reset := parseMail(t, got[0].data), parseMail(t, got[1].data)

	t.Run("reset", func(t *testing.T) {
		token := tokenInMail(t, reset.text)
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
		token := tokenInMail(t, verify.text)
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
	if _, err := env.st.updateUser(context.Background(), user{Role: roleAdmin}, carol.ID, userPatch{IsActive: new(false)}); err != nil {
		t.Fatal(err)
	}
	env.deliverMail(t) // the verification mails of registration
	before := len(srv.delivered())

	for _, email := range []string{"nobody@example.com", "carol@example.com"} {
		requestReset(t, env, email)
	}
	if sent := env.deliverMail(t); len(sent) != 0 {
		t.Errorf("mail sent for no active account: %+v", sent)
	}
	requestReset(t, env, "alice@example.com")
	env.deliverMail(t)
	got := srv.delivered()[before:]
	if len(got) != 1 || got[0].to[0] != "TO:<alice@example.com>" || parseMail(t, got[0].data).header.Get("Subject") != mailSubjects[mailPasswordReset] {
		t.Errorf("received %+v, want one reset mail to alice", got)
	}
}

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
		// Taken at the end of data, the message is delivered: a failed goodbye must not make
		// the outbox send it again.
		{name: "sender with a name", change: func(c *mailConfig) { c.sender = mail.Address{Name: "Acme", Address: "no-reply@acme.test"} },
			wantCmd: "MAIL FROM:<no-reply@acme.test>", delivered: 1},
		{name: "goodbye refused after delivery", refuse: map[string]string{"QUIT": "421 4.4.2 closing"}, wantCmd: "QUIT", delivered: 1},
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
			raw := string(formatMessage(mail.Address{Address: "usermgmt@example.com"}, mailMessage{to: "zoe@example.com", subject: tt.subject, text: text, html: html}, now))
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
	// A sender's name, encoded when it is not ASCII; the Message-ID takes the address's domain.
	p := parseMail(t, string(formatMessage(mail.Address{Name: "Équipe Acme", Address: "no-reply@acme.test"},
		mailMessage{to: "zoe@example.com", subject: "s", text: "b", html: "b"}, now)))
	from, err := mail.ParseAddress(p.header.Get("From"))
	if err != nil || from.Name != "Équipe Acme" || from.Address != "no-reply@acme.test" || !strings.HasPrefix(p.header.Get("From"), "=?utf-8?") {
		t.Errorf("From %q parses to %v (%v), want Équipe Acme <no-reply@acme.test>, encoded", p.header.Get("From"), from, err)
	}
	if id := p.header.Get("Message-ID"); !strings.HasSuffix(id, "@acme.test>") {
		t.Errorf("Message-ID %q, want one at acme.test", id)
	}
	// Every message gets its own Message-ID.
	ids := map[string]bool{}
	for range 2 {
		p := parseMail(t, string(formatMessage(mail.Address{Address: "usermgmt@example.com"}, mailMessage{to: "zoe@example.com", subject: "s", text: "b", html: "b"}, now)))
		ids[p.header.Get("Message-ID")] = true
	}
	if len(ids) != 2 {
		t.Errorf("two messages share a Message-ID: %v", ids)
	}
}

// TestSendSMTPRefusesUndeliverableRecipients: an address the rules refuse, stored by an earlier
// version, is a send error naming it, and the mail server is never contacted: no raw
// non-ASCII RCPT TO without SMTPUTF8, no delivery to a host the user picked.
func TestSendSMTPRefusesUndeliverableRecipients(t *testing.T) {
	t.Parallel()
	srv := newSMTPServer(t, smtpOptions{})
	for _, to := range []string{"l\u0130z@example.com", "x@[127.0.0.1]", "x@127.0.0.1", "a@b", "x\u2028@example.com",
		"x@example.com\r\nBcc: eve@example.com"} {
		ctx, cancel := context.WithTimeout(context.Background(), smtpWaitLimit)
		err := sendSMTP(ctx, srv.mailConfig(), mailMessage{to: to, subject: "s", text: "t", html: "h"})
		cancel()
		if err == nil || !strings.Contains(err.Error(), "cannot be sent to") {
			t.Errorf("sending to %q: %v, want a refusal", to, err)
		}
		if srv.contacted() {
			t.Errorf("sending to %q contacted the mail server", to)
		}
	}
	if err := sendTestMail(srv, nil); err != nil || !srv.contacted() {
		t.Errorf("sending to a good address: %v", err)
	}
}

// TestRenderReplacesUnsafeNames: a name stored before the name rules, holding a bidirectional
// control or a line separator, is not mailed: the username greets instead.
func TestRenderReplacesUnsafeNames(t *testing.T) {
	t.Parallel()
	cfg := testConfig("").mail
	for name, greeting := range map[string]string{
		"Zo\u00eb":           "Hello Zo\u00eb,",
		"Eve\u202etxt.exe":   "Hello eve,",
		"Eve\u2028Dear user": "Hello eve,",
		"\u200b":             "Hello eve,",
	} {
		msg, err := render(cfg, mailPasswordChanged, "eve@example.com", mailData{Name: name, Username: "eve", How: "changed"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(msg.text, greeting) || !strings.Contains(msg.html, greeting) {
			t.Errorf("name %q: text %q html %q, want %q", name, msg.text, msg.html, greeting)
		}
	}
}
