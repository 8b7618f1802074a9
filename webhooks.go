package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Webhooks: the admin endpoints that manage them and their deliveries, and their SQL. Every
// change to a webhook is audited; the secret is shown once, when made, and sealed at rest.

// webhookPing is the event type of a ping, sent to the pinged webhook only.
const webhookPing = "webhook.ping"

// webhookEventTypes are the event types a webhook may subscribe to: those of webhookEvents.
var webhookEventTypes = slices.Compact(slices.Sorted(maps.Values(webhookEvents)))

// webhookSecretPrefix starts every secret, as the Standard Webhooks specification has it.
const webhookSecretPrefix = "whsec_"

// previousSecretOverlap is how long a rotated-out secret keeps signing beside the new one.
const previousSecretOverlap = 24 * time.Hour

// newWebhookSecret returns "whsec_" and the base64 of 32 random bytes.
func newWebhookSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return webhookSecretPrefix + base64.StdEncoding.EncodeToString(b)
}

// webhook is a row of the webhooks table as admins see it: never its secrets.
type webhook struct {
	ID          int64     `json:"id" db:"id"`
	URL         string    `json:"url" db:"url"`
	Events      []string  `json:"events" db:"events"`
	Description string    `json:"description" db:"description"`
	Enabled     bool      `json:"enabled" db:"enabled"`
	CreatedAt   time.Time `json:"created_at" db:"created_at"`
	UpdatedAt   time.Time `json:"updated_at" db:"updated_at"`
}

const webhookColumns = "id, url, events, description, enabled, created_at, updated_at"

// webhookWithSecret is the reply that shows a secret: the only one.
type webhookWithSecret struct {
	webhook
	Secret string `json:"secret"`
}

// webhookPatch is the body of a create (URL and Events required) or an update.
type webhookPatch struct {
	URL         *string   `json:"url"`
	Events      *[]string `json:"events"`
	Description *string   `json:"description"`
	Enabled     *bool     `json:"enabled"`
}

// problems checks the fields given; create also requires url and events.
func (p webhookPatch) problems(cfg webhookConfig, create bool) map[string]string {
	problems := map[string]string{}
	if p.URL != nil {
		check(problems, "url", webhookURLProblem(cfg, *p.URL))
	} else if create {
		problems["url"] = "is required"
	}
	if p.Events != nil {
		check(problems, "events", eventsProblem(*p.Events))
	} else if create {
		problems["events"] = "is required"
	}
	if p.Description != nil && len(*p.Description) > 500 {
		problems["description"] = "must be at most 500 bytes"
	}
	return problems
}

// webhookURLProblem checks an endpoint URL when it is saved. An address literal that may not
// be reached is refused here already; every other address is checked when it is dialled.
func webhookURLProblem(cfg webhookConfig, raw string) string {
	u, err := url.Parse(raw)
	switch {
	case len(raw) > 2000:
		return "must be at most 2000 bytes"
	case err != nil || u.Opaque != "" || u.Hostname() == "" || u.Scheme != "https" && u.Scheme != "http":
		return "must be an absolute https:// URL with a host"
	case u.Scheme == "http" && !cfg.allowHTTP:
		return "must be an https:// URL (WEBHOOK_ALLOW_HTTP=true allows http://)"
	case u.User != nil:
		return "must not hold a user name or password"
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return "must not have a fragment"
	}
	ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]"))
	private := err == nil && !publicIP(ip) || strings.EqualFold(strings.TrimSuffix(u.Hostname(), "."), "localhost")
	if private && !cfg.allowPrivate {
		return "must not be a loopback, private, link-local or unspecified address (WEBHOOK_ALLOW_PRIVATE=true allows them)"
	}
	return ""
}

// eventsProblem checks a subscription: a non-empty list of event types, or ["*"] for all.
func eventsProblem(events []string) string {
	if len(events) == 0 {
		return `must list at least one event type, or be ["*"] for all`
	}
	if slices.Contains(events, "*") {
		if len(events) > 1 {
			return `"*" stands for every event type and must be alone`
		}
		return ""
	}
	for _, e := range events {
		if !slices.Contains(webhookEventTypes, e) {
			return fmt.Sprintf("%q is not an event type; they are: %s", e, strings.Join(webhookEventTypes, ", "))
		}
	}
	return ""
}

// webhookID parses the {id} of the path.
func webhookID(r *http.Request) (int64, error) {
	id, ok := parseID(r.PathValue("id"))
	if !ok {
		return 0, fail(errInvalid, "Webhook id must be a positive integer")
	}
	return id, nil
}

var errWebhookNotFound = fail(errNotFound, "Webhook not found")

func handleCreateWebhook(cfg webhookConfig, st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		p, err := decode[webhookPatch](w, r)
		if err != nil {
			return err
		}
		if err := invalidFields(p.problems(cfg, true)); err != nil {
			return err
		}
		created, err := st.createWebhook(r.Context(), currentUser(r.Context()), p)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, created)
		return nil
	}
}

func handleListWebhooks(st *store) apiFunc {
	return handleList(func(q url.Values) (page, error) {
		p := defaultPage
		return p, parseListQuery(q, &p, func(string, string) string { return "unknown parameter" })
	}, st.listWebhooks)
}

func handleGetWebhook(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := webhookID(r)
		if err != nil {
			return err
		}
		h, err := queryWebhook(r.Context(), st.pool, id, "")
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, h)
		return nil
	}
}

func handleUpdateWebhook(cfg webhookConfig, st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := webhookID(r)
		if err != nil {
			return err
		}
		p, err := decode[webhookPatch](w, r)
		if err != nil {
			return err
		}
		if err := invalidFields(p.problems(cfg, false)); err != nil {
			return err
		}
		h, err := st.updateWebhook(r.Context(), currentUser(r.Context()), id, p)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, h)
		return nil
	}
}

func handleDeleteWebhook(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := webhookID(r)
		if err != nil {
			return err
		}
		if err := st.deleteWebhook(r.Context(), currentUser(r.Context()), id); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, message{"Webhook deleted"})
		return nil
	}
}

func handleRotateWebhookSecret(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := webhookID(r)
		if err != nil {
			return err
		}
		rotated, err := st.rotateWebhookSecret(r.Context(), currentUser(r.Context()), id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, rotated)
		return nil
	}
}

func handlePingWebhook(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := webhookID(r)
		if err != nil {
			return err
		}
		event, err := st.pingWebhook(r.Context(), currentUser(r.Context()), id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"message": "Ping queued", "event_id": eventID(event)})
		return nil
	}
}

// createWebhook stores a new webhook with a fresh secret, which the reply alone shows.
func (s *store) createWebhook(ctx context.Context, actor user, p webhookPatch) (webhookWithSecret, error) {
	created := webhookWithSecret{Secret: newWebhookSecret()}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `INSERT INTO webhooks (url, events, description, enabled, secret, created_at, updated_at)
			VALUES ($1, $2, $3, COALESCE($4, true), $5, $6, $6) RETURNING `+webhookColumns,
			*p.URL, slices.Compact(slices.Sorted(slices.Values(*p.Events))), stringOr(p.Description, ""), p.Enabled,
			s.sealer.seal(created.Secret), s.now())
		h, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[webhook])
		if err != nil {
			return fmt.Errorf("create webhook: %w", err)
		}
		created.webhook = h
		return s.audit(ctx, tx, auditWebhookCreated, actor.ID, 0, map[string]any{"webhook_id": h.ID, "url": h.URL, "events": h.Events})
	})
	return created, err
}

func stringOr(s *string, fallback string) string {
	if s == nil {
		return fallback
	}
	return *s
}

// queryWebhook reads webhook id, locked when lock is " FOR UPDATE"; a missing one is
// errWebhookNotFound.
func queryWebhook(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, id int64, lock string) (webhook, error) {
	rows, _ := db.Query(ctx, "SELECT "+webhookColumns+" FROM webhooks WHERE id = $1"+lock, id)
	h, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[webhook])
	if errors.Is(err, pgx.ErrNoRows) {
		return h, errWebhookNotFound
	}
	if err != nil {
		return h, fmt.Errorf("read webhook: %w", err)
	}
	return h, nil
}

// listWebhooks returns a page of webhooks, oldest first, and how many there are.
func (s *store) listWebhooks(ctx context.Context, p page) ([]webhook, int, error) {
	rows, _ := s.pool.Query(ctx, "SELECT "+webhookColumns+" FROM webhooks ORDER BY id"+p.limitOffset())
	hooks, err := pgx.CollectRows(rows, pgx.RowToStructByName[webhook])
	if err != nil {
		return nil, 0, fmt.Errorf("list webhooks: %w", err)
	}
	var total int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM webhooks").Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count webhooks: %w", err)
	}
	return hooks, total, nil
}

// updateWebhook applies p to webhook id and audits the fields it changed.
func (s *store) updateWebhook(ctx context.Context, actor user, id int64, p webhookPatch) (webhook, error) {
	var after webhook
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := queryWebhook(ctx, tx, id, " FOR UPDATE")
		if err != nil {
			return err
		}
		after = before
		var fields []string
		set := func(name string, changed bool) {
			if changed {
				fields = append(fields, name)
			}
		}
		if p.URL != nil {
			after.URL = *p.URL
			set("url", after.URL != before.URL)
		}
		if p.Events != nil {
			after.Events = slices.Compact(slices.Sorted(slices.Values(*p.Events)))
			set("events", !slices.Equal(after.Events, before.Events))
		}
		if p.Description != nil {
			after.Description = *p.Description
			set("description", after.Description != before.Description)
		}
		if p.Enabled != nil {
			after.Enabled = *p.Enabled
			set("enabled", after.Enabled != before.Enabled)
		}
		if len(fields) == 0 {
			return nil
		}
		after.UpdatedAt = s.now()
		_, err = tx.Exec(ctx, `UPDATE webhooks SET url = $2, events = $3, description = $4, enabled = $5, updated_at = $6
			WHERE id = $1`, id, after.URL, after.Events, after.Description, after.Enabled, after.UpdatedAt)
		if err != nil {
			return fmt.Errorf("update webhook: %w", err)
		}
		return s.audit(ctx, tx, auditWebhookUpdated, actor.ID, 0, map[string]any{"webhook_id": id, "fields": fields})
	})
	return after, err
}

// deleteWebhook deletes webhook id with its deliveries.
func (s *store) deleteWebhook(ctx context.Context, actor user, id int64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var url string
		err := tx.QueryRow(ctx, "DELETE FROM webhooks WHERE id = $1 RETURNING url", id).Scan(&url)
		if errors.Is(err, pgx.ErrNoRows) {
			return errWebhookNotFound
		}
		if err != nil {
			return fmt.Errorf("delete webhook: %w", err)
		}
		return s.audit(ctx, tx, auditWebhookDeleted, actor.ID, 0, map[string]any{"webhook_id": id, "url": url})
	})
}

// rotatedSecret is the reply to a rotation: the new secret, and until when the old one still
// signs beside it.
type rotatedSecret struct {
	webhookWithSecret
	PreviousSecretExpiresAt time.Time `json:"previous_secret_expires_at"`
}

// rotateWebhookSecret gives webhook id a new secret; the current one becomes the previous one,
// signing beside it for previousSecretOverlap (one rotated out before is dropped).
func (s *store) rotateWebhookSecret(ctx context.Context, actor user, id int64) (rotatedSecret, error) {
	now := s.now()
	r := rotatedSecret{webhookWithSecret: webhookWithSecret{Secret: newWebhookSecret()}, PreviousSecretExpiresAt: now.Add(previousSecretOverlap)}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `UPDATE webhooks SET previous_secret = secret, previous_secret_until = $3, secret = $2,
			updated_at = $4 WHERE id = $1 RETURNING `+webhookColumns, id, s.sealer.seal(r.Secret), r.PreviousSecretExpiresAt, now)
		h, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[webhook])
		if errors.Is(err, pgx.ErrNoRows) {
			return errWebhookNotFound
		}
		if err != nil {
			return fmt.Errorf("rotate webhook secret: %w", err)
		}
		r.webhook = h
		return s.audit(ctx, tx, auditWebhookSecretRotated, actor.ID, 0, map[string]any{"webhook_id": id})
	})
	return r, err
}

// pingWebhook queues a webhook.ping event to webhook id alone and returns its event's id. A
// disabled webhook is sent nothing, so it is a conflict.
func (s *store) pingWebhook(ctx context.Context, actor user, id int64) (int64, error) {
	var event int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		h, err := queryWebhook(ctx, tx, id, " FOR SHARE")
		if err != nil {
			return err
		}
		if !h.Enabled {
			return fail(errConflict, "Webhook is disabled: enable it first")
		}
		e, err := s.auditRow(ctx, tx, auditWebhookPinged, actor.ID, 0, map[string]any{"webhook_id": id})
		if err != nil {
			return err
		}
		event = e.ID
		return s.enqueueEvent(ctx, tx, e, webhookPing, id)
	})
	return event, err
}
