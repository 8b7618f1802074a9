package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/smtp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Mail backends (MAIL_BACKEND).
const (
	mailSMTP  = "smtp"  // send through MAIL_SERVER
	mailLog   = "log"   // write the message to the server log
	mailDummy = "dummy" // log it and also return reset tokens in responses: testing only
)

type mailConfig struct {
	backend  string
	server   string
	port     int
	username string
	password string
	useTLS   bool // STARTTLS after connecting
	useSSL   bool // TLS from the first byte (port 465 style)
	sender   string
	timeout  time.Duration // for the whole conversation with the server
}

type mailMessage struct {
	to      string
	subject string
	body    string
}

// mailer sends mail in the background, so that no reply waits for (or reveals by its timing)
// a mail server; wait lets shutdown finish what was started.
type mailer struct {
	cfg      mailConfig
	logger   *slog.Logger
	inFlight sync.WaitGroup
}

func newMailer(cfg mailConfig, logger *slog.Logger) *mailer {
	return &mailer{cfg: cfg, logger: logger}
}

// revealsTokens reports whether replies may carry reset tokens (the dummy backend).
func (m *mailer) revealsTokens() bool { return m.cfg.backend == mailDummy }

func (m *mailer) sendAsync(msg mailMessage) {
	m.inFlight.Go(func() {
		if err := m.send(msg); err != nil {
			m.logger.Error("mail not sent", "subject", msg.subject, "err", err)
		}
	})
}

func (m *mailer) wait() { m.inFlight.Wait() }

func (m *mailer) send(msg mailMessage) error {
	if m.cfg.backend != mailSMTP {
		// The body holds a reset token: this backend is for development, where the log is
		// the mailbox.
		m.logger.Info("mail", "to", msg.to, "subject", msg.subject, "body", msg.body)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.timeout)
	defer cancel()
	return sendSMTP(ctx, m.cfg, msg)
}

// sendSMTP delivers one message. It refuses to go on without TLS when STARTTLS was asked for,
// and net/smtp's PlainAuth refuses to send credentials unencrypted except to localhost.
func sendSMTP(ctx context.Context, cfg mailConfig, msg mailMessage) error {
	addr := net.JoinHostPort(cfg.server, strconv.Itoa(cfg.port))
	tlsConfig := &tls.Config{ServerName: cfg.server, MinVersion: tls.VersionTLS12}
	dialer := &net.Dialer{}
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
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
	if err := c.Mail(cfg.sender); err != nil {
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
	return c.Quit()
}

// formatMessage renders an RFC 5322 message with a UTF-8 quoted-printable text body.
func formatMessage(from string, msg mailMessage, now time.Time) []byte {
	var b bytes.Buffer
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	domain := from[strings.LastIndex(from, "@")+1:]
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@%s>\r\n",
		from, msg.to, mime.QEncoding.Encode("utf-8", msg.subject), now.Format(time.RFC1123Z), hex.EncodeToString(id), domain)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
	qp := quotedprintable.NewWriter(&b)
	_, _ = qp.Write([]byte(strings.ReplaceAll(msg.body, "\n", "\r\n")))
	_ = qp.Close()
	return b.Bytes()
}

// resetMail is the password reset message for u.
func resetMail(cfg config, u user, token string) mailMessage {
	link := strings.TrimRight(cfg.publicURL, "/") + "/api/auth/reset-password/" + token
	return mailMessage{
		to:      u.Email,
		subject: "Reset your password",
		body: fmt.Sprintf(`Hello %s,

Someone asked to reset the password of your account %q.
If it was you, set a new password within %s with this token:

    %s

for example:

    curl -X POST %s -H 'Content-Type: application/json' -d '{"new_password": "..."}'

If it was not you, ignore this message: your password stays as it is.
`, u.FirstName, u.Username, cfg.resetTTL, token, link),
	}
}
