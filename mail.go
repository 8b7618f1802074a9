package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"log/slog"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"strconv"
	"strings"
	texttemplate "text/template"
	"time"
)

// Mail: messages are queued in the mail_outbox table by the store, in the transaction of the
// change that causes them, and sent by a background worker (outbox.go) through one of these
// backends (MAIL_BACKEND).
const (
	mailSMTP  = "smtp"  // send through MAIL_SERVER
	mailLog   = "log"   // write the message to the server log
	mailDummy = "dummy" // log it and also return reset tokens in responses: testing only
)

type mailConfig struct {
	backend        string
	server         string
	port           int
	username       string
	password       string
	useTLS         bool         // STARTTLS after connecting, required
	useSSL         bool         // TLS from the first byte (port 465 style)
	insecureTLS    bool         // skip certificate verification: for testing only
	sender         mail.Address // MAIL_DEFAULT_SENDER: the envelope sender, and From: with its name
	connectTimeout time.Duration
	commandTimeout time.Duration // for each read or write
	totalTimeout   time.Duration // for the whole conversation
	maxAttempts    int
	resetURL       string // with {token}
	verifyURL      string // with {token}
	inviteURL      string // with {token}
	publicURL      string
}

// Message kinds; each has a pair of templates, templates/<kind>.txt and .html.
const (
	mailPasswordReset   = "password_reset"
	mailVerifyEmail     = "verify_email"
	mailEmailChanged    = "email_changed"
	mailPasswordChanged = "password_changed"
	mailInvite          = "invite"
	mailMFAEnabled      = "mfa_enabled"
	mailMFADisabled     = "mfa_disabled"
	mailRecoveryUsed    = "mfa_recovery_code_used"
)

var mailSubjects = map[string]string{
	mailPasswordReset:   "Reset your password",
	mailVerifyEmail:     "Confirm your email address",
	mailEmailChanged:    "Your email address was changed",
	mailPasswordChanged: "Your password was changed",
	mailInvite:          "You are invited: choose your password",
	mailMFAEnabled:      "Two-factor login was turned on",
	mailMFADisabled:     "Two-factor login was turned off",
	mailRecoveryUsed:    "A recovery code was used",
}

//go:embed templates
var templateFS embed.FS

var (
	textTemplates = texttemplate.Must(texttemplate.ParseFS(templateFS, "templates/*.txt"))
	htmlTemplates = htmltemplate.Must(htmltemplate.ParseFS(templateFS, "templates/*.html"))
)

// mailData is what a queued message's templates need; it is stored as JSON in the outbox.
type mailData struct {
	Name     string `json:"name"`
	Username string `json:"username"`
	Email    string `json:"email"`
	NewEmail string `json:"new_email,omitempty"`
	Token    string `json:"-"`                      // sealed into SealedToken while queued
	Sealed   string `json:"sealed_token,omitempty"` // see seal.go
	Expires  string `json:"expires,omitempty"`
	How      string `json:"how,omitempty"`
	Left     int    `json:"left,omitempty"` // recovery codes left
	Link     string `json:"-"`              // filled in when rendered, from the configured URLs
	APIURL   string `json:"-"`
}

// newMailData starts the data of a message to u.
func newMailData(u user) mailData {
	return mailData{Name: u.FirstName, Username: u.Username, Email: u.Email}
}

// mailMessage is a rendered message.
type mailMessage struct {
	to      string
	subject string
	text    string
	html    string
}

// render fills a kind's templates. Links are made here, at sending time, so that a change of
// PUBLIC_URL applies to queued mail too.
func render(cfg mailConfig, kind, to string, d mailData) (mailMessage, error) {
	// A name stored before the name rules could hold bidirectional controls that reorder the
	// message around it: such a name gives way to the username, which is plain ASCII.
	if nameProblem(d.Name) != "" {
		d.Name = d.Username
	}
	api := strings.TrimRight(cfg.publicURL, "/")
	switch kind {
	case mailPasswordReset:
		d.Link = strings.ReplaceAll(cfg.resetURL, "{token}", d.Token)
		d.APIURL = api + resetPasswordPath + d.Token
	case mailVerifyEmail:
		d.Link = strings.ReplaceAll(cfg.verifyURL, "{token}", d.Token)
		d.APIURL = api + verifyEmailPath + d.Token
	case mailInvite:
		d.Link = strings.ReplaceAll(cfg.inviteURL, "{token}", d.Token)
		d.APIURL = api + acceptInvitePath + d.Token
	}
	var text, html bytes.Buffer
	if err := textTemplates.ExecuteTemplate(&text, kind+".txt", d); err != nil {
		return mailMessage{}, fmt.Errorf("render %s: %w", kind, err)
	}
	if err := htmlTemplates.ExecuteTemplate(&html, kind+".html", d); err != nil {
		return mailMessage{}, fmt.Errorf("render %s: %w", kind, err)
	}
	return mailMessage{to: to, subject: mailSubjects[kind], text: text.String(), html: html.String()}, nil
}

// deliver hands a rendered message to the configured backend.
func deliver(ctx context.Context, cfg mailConfig, logger *slog.Logger, msg mailMessage) error {
	if cfg.backend != mailSMTP {
		// The body may hold a token: these backends are for development, where the log is
		// the mailbox.
		logger.Info("mail", "to", msg.to, "subject", msg.subject, "body", msg.text)
		return nil
	}
	return sendSMTP(ctx, cfg, msg)
}

// sendSMTP delivers one message. With MAIL_USE_TLS it refuses to go on unless the server
// offers STARTTLS; net/smtp's PlainAuth refuses to send credentials unencrypted except to
// localhost.
func sendSMTP(ctx context.Context, cfg mailConfig, msg mailMessage) error {
	// Without SMTPUTF8 (never negotiated) a non-ASCII address would go out raw in RCPT TO and
	// To:, and an IP literal would send the relay to a host of the user's choosing. The rules
	// refuse such addresses; this stops one an earlier version accepted.
	if problem := emailProblem(msg.to); problem != "" {
		return fmt.Errorf("recipient %q cannot be sent to: it %s", msg.to, problem)
	}
	addr := net.JoinHostPort(cfg.server, strconv.Itoa(cfg.port))
	tlsConfig := &tls.Config{ServerName: cfg.server, MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.insecureTLS}
	dialer := &net.Dialer{Timeout: cfg.connectTimeout}
	raw, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	var conn net.Conn = &deadlineConn{Conn: raw, perOp: cfg.commandTimeout, end: time.Now().Add(cfg.totalTimeout)}
	if cfg.useSSL {
		conn = tls.Client(conn, tlsConfig)
	}
	c, err := smtp.NewClient(conn, cfg.server)
	if err != nil {
		conn.Close()
		return fmt.Errorf("smtp greeting: %w", err)
	}
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return fmt.Errorf("smtp hello: %w", err)
	}
	if cfg.useTLS {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return errors.New("smtp: server does not offer STARTTLS, which MAIL_USE_TLS requires")
		}
		if err := c.StartTLS(tlsConfig); err != nil {
			return fmt.Errorf("smtp starttls: %w", err)
		}
	}
	if cfg.username != "" {
		if err := c.Auth(smtp.PlainAuth("", cfg.username, cfg.password, cfg.server)); err != nil {
			return fmt.Errorf("smtp auth: %w", err)
		}
	}
	if err := c.Mail(cfg.sender.Address); err != nil {
		return fmt.Errorf("smtp mail from: %w", err)
	}
	if err := c.Rcpt(msg.to); err != nil {
		return fmt.Errorf("smtp rcpt to: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp data: %w", err)
	}
	if _, err := w.Write(formatMessage(cfg.sender, msg, time.Now())); err != nil {
		return fmt.Errorf("smtp write: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp end of data: %w", err)
	}
	// The server has taken the message: an error saying goodbye must not make the outbox
	// send it again.
	_ = c.Quit()
	return nil
}

// deadlineConn bounds every read and write by perOp, and all of them together by end, so a
// stalled server cannot hold a sender forever.
type deadlineConn struct {
	net.Conn
	perOp time.Duration
	end   time.Time
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	_ = c.SetDeadline(c.deadline())
	return c.Conn.Read(b)
}

func (c *deadlineConn) Write(b []byte) (int, error) {
	_ = c.SetDeadline(c.deadline())
	return c.Conn.Write(b)
}

func (c *deadlineConn) deadline() time.Time {
	if d := time.Now().Add(c.perOp); d.Before(c.end) {
		return d
	}
	return c.end
}

// formatMessage renders an RFC 5322 message: multipart/alternative with a text and an HTML
// part, both UTF-8 in quoted-printable, and an RFC 2047 encoded subject.
func formatMessage(from mail.Address, msg mailMessage, now time.Time) []byte {
	var body bytes.Buffer
	parts := multipart.NewWriter(&body)
	for _, p := range []struct{ contentType, content string }{
		{"text/plain; charset=utf-8", msg.text},
		{"text/html; charset=utf-8", msg.html},
	} {
		w, _ := parts.CreatePart(textproto.MIMEHeader{ // writes to a bytes.Buffer do not fail
			"Content-Type":              {p.contentType},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		qp := quotedprintable.NewWriter(w)
		_, _ = qp.Write([]byte(strings.ReplaceAll(p.content, "\n", "\r\n")))
		_ = qp.Close()
	}
	_ = parts.Close()

	id := make([]byte, 16)
	_, _ = rand.Read(id)
	domain := from.Address[strings.LastIndex(from.Address, "@")+1:]
	sender := from.Address
	if from.Name != "" {
		sender = from.String() // the name RFC 2047-encoded when it needs to be
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@%s>\r\n",
		sender, msg.to, mime.QEncoding.Encode("utf-8", msg.subject), now.Format(time.RFC1123Z), hex.EncodeToString(id), domain)
	// The boundary goes on a folded line of its own, keeping header lines within 78 characters.
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary=%q\r\n\r\n", parts.Boundary())
	b.Write(body.Bytes())
	return b.Bytes()
}

// humanDuration writes a token lifetime for people: "1 hour", "24 hours", "90 minutes".
func humanDuration(d time.Duration) string {
	unit, n := "minute", int(d.Minutes())
	if d >= time.Hour && d%time.Hour == 0 {
		unit, n = "hour", int(d.Hours())
	}
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}
