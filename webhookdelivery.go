package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Webhook delivery, and the admin endpoints on deliveries: events are queued in the transaction
// of their audit row (enqueueEvent), and a worker in every instance POSTs them, signed as the
// Standard Webhooks specification says, retrying with back-off. A delivery is leased while it is sent, so two instances never
// send it at once; a lease outlives the send's timeout, and one left by an instance that died
// runs out and the delivery is sent again: at least once, never zero times.

// webhookConfig is how webhooks are delivered.
type webhookConfig struct {
	maxAttempts  int
	allowHTTP    bool // http:// URLs as well as https://
	allowPrivate bool // loopback, private, link-local and unspecified addresses
	timeout      time.Duration
	pollInterval time.Duration
	inFlight     int // deliveries sent at once by one instance
}

// lease is how long a claimed delivery stays another instance's: its send is cut off after
// timeout, and the margin covers recording the outcome.
func (c webhookConfig) lease() time.Duration { return c.timeout + 20*time.Second }

// maxReplyBytes bounds what is read of an endpoint's reply, which is otherwise ignored.
const maxReplyBytes = 64 << 10

// eventPayload is the body of a webhook request.
type eventPayload struct {
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	CreatedAt time.Time `json:"created_at"`
	Data      eventData `json:"data"`
}

type eventData struct {
	ActorID  *int64         `json:"actor_id"`
	TargetID *int64         `json:"target_id"`
	IP       string         `json:"ip"`
	Details  map[string]any `json:"details"`
	User     *user          `json:"user"` // after the change; null once deleted
}

// eventID is the webhook-id of the event of audit row id.
func eventID(id int64) string { return "evt_" + strconv.FormatInt(id, 10) }

// enqueueEvent queues the event of audit row e, of eventType, inside tx: to webhookID alone
// when it is not 0 (a ping), else to every enabled webhook subscribed to the type. The user is
// read here, in the transaction of the change, so the event shows the state it committed; the
// user type never serialises a hash or a token.
func (s *store) enqueueEvent(ctx context.Context, tx pgx.Tx, e auditEvent, eventType string, webhookID int64) error {
	payload := eventPayload{ID: eventID(e.ID), Type: eventType, CreatedAt: e.CreatedAt,
		Data: eventData{ActorID: e.ActorID, TargetID: e.TargetID, IP: e.IP, Details: e.Details}}
	if e.TargetID != nil {
		u, err := queryUser(ctx, tx, "SELECT "+userColumns+" FROM users WHERE id = $1", *e.TargetID)
		switch {
		case err == nil:
			payload.Data.User = &u
		case !errors.Is(err, errNotFound):
			return err
		}
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO webhook_deliveries (webhook_id, event_id, type, payload, created_at, next_attempt_at)
		SELECT id, $1, $2, $3, $4, $4 FROM webhooks
		WHERE CASE WHEN $5::bigint = 0 THEN enabled AND events && ARRAY[$2::text, '*'] ELSE id = $5 END`,
		e.ID, eventType, string(body), s.now(), webhookID)
	if err != nil {
		return fmt.Errorf("queue webhook event: %w", err)
	}
	return nil
}

// claimedDelivery is a delivery leased to this instance, with what sending it needs.
type claimedDelivery struct {
	ID, WebhookID, EventID int64
	Payload                string
	Attempts               int // this one included
	URL                    string
	Secret                 string  // sealed
	PreviousSecret         *string // sealed; set while it still signs
}

// claimDelivery leases the oldest due delivery of an enabled webhook that has none in flight,
// so that a slow endpoint holds at most one of an instance's slots; it reports whether there
// was one. The attempt is counted here: a delivery whose instance dies mid-send has used it.
func (s *store) claimDelivery(ctx context.Context, cfg webhookConfig) (claimedDelivery, bool, error) {
	now := s.now()
	var d claimedDelivery
	err := s.pool.QueryRow(ctx, `UPDATE webhook_deliveries SET attempts = attempts + 1, leased_until = $2, next_attempt_at = $2
		FROM webhooks w
		WHERE w.id = webhook_deliveries.webhook_id AND webhook_deliveries.id = (
			SELECT d.id FROM webhook_deliveries d JOIN webhooks h ON h.id = d.webhook_id
			WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND h.enabled
				AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o
					WHERE o.webhook_id = d.webhook_id AND o.status = 'pending' AND o.leased_until > $1)
			ORDER BY d.next_attempt_at, d.id LIMIT 1 FOR UPDATE OF d SKIP LOCKED)
		RETURNING webhook_deliveries.id, w.id, event_id, payload, attempts, w.url, w.secret,
			CASE WHEN w.previous_secret_until > $1 THEN w.previous_secret END`,
		now, now.Add(cfg.lease())).
		Scan(&d.ID, &d.WebhookID, &d.EventID, &d.Payload, &d.Attempts, &d.URL, &d.Secret, &d.PreviousSecret)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, false, nil
	}
	if err != nil {
		return d, false, fmt.Errorf("claim webhook delivery: %w", err)
	}
	return d, true, nil
}

// deliveryOutcome is what one attempt came to: a status of 0 means no reply.
type deliveryOutcome struct {
	status int
	err    error
}

func (o deliveryOutcome) delivered() bool { return o.err == nil && o.status/100 == 2 }

// recordDelivery stores the outcome of the attempt d, unless the delivery changed meanwhile
// (deleted, re-queued, or claimed again after its lease ran out).
func (s *store) recordDelivery(ctx context.Context, cfg webhookConfig, d claimedDelivery, o deliveryOutcome) error {
	now := s.now()
	status, next := "pending", now.Add(jittered(webhookRetryDelay(d.Attempts)))
	var lastError *string
	switch {
	case o.delivered():
		status = "delivered"
	case o.err != nil:
		text := o.err.Error()
		lastError = &text
	default:
		text := "HTTP " + strconv.Itoa(o.status)
		lastError = &text
	}
	if status == "pending" && d.Attempts >= cfg.maxAttempts {
		status = "failed"
	}
	_, err := s.pool.Exec(ctx, `UPDATE webhook_deliveries SET status = $3, leased_until = NULL,
			next_attempt_at = $4, last_status = NULLIF($5::integer, 0), last_error = $6,
			delivered_at = CASE WHEN $3 = 'delivered' THEN $7::timestamptz END
		WHERE id = $1 AND attempts = $2 AND status = 'pending'`,
		d.ID, d.Attempts, status, next, o.status, lastError, now)
	if err != nil {
		return fmt.Errorf("record webhook delivery: %w", err)
	}
	return nil
}

// webhookRetryDelay is the wait after attempt n failed: a minute, doubling, at most eight
// hours, so that the default 12 attempts span about a day.
func webhookRetryDelay(attempts int) time.Duration {
	return min(time.Minute<<min(attempts-1, 10), 8*time.Hour)
}

// jittered takes up to a quarter off d at random, so that endpoints that failed together
// (an outage) are not all retried in the same instant.
func jittered(d time.Duration) time.Duration {
	return d - rand.N(d/4+1)
}

// sendDelivery makes one attempt at d and records it. Its secrets sealed under the previous
// JWT key are sealed again under the current one, so that they survive the next rotation.
func (s *store) sendDelivery(ctx context.Context, cfg webhookConfig, client *http.Client, logger *slog.Logger, d claimedDelivery) error {
	secrets, err := s.openSecrets(ctx, d)
	o := deliveryOutcome{err: err}
	if err == nil {
		o = postEvent(ctx, cfg, client, d, secrets)
	}
	if !o.delivered() {
		logger.Warn("webhook not delivered", "webhook", d.WebhookID, "event", eventID(d.EventID),
			"attempt", d.Attempts, "status", o.status, "err", o.err)
	}
	return s.recordDelivery(ctx, cfg, d, o)
}

// openSecrets opens the secrets that sign d: the current one, then the previous one while it
// still signs.
func (s *store) openSecrets(ctx context.Context, d claimedDelivery) ([]string, error) {
	sealed := []string{d.Secret}
	if d.PreviousSecret != nil {
		sealed = append(sealed, *d.PreviousSecret)
	}
	var secrets []string
	for i, column := range []string{"secret", "previous_secret"}[:len(sealed)] {
		plain, byPrevious, err := s.sealer.openKey(sealed[i])
		if err != nil {
			return nil, errors.New("the webhook secret cannot be opened: was JWT_SECRET_KEY changed twice? rotate the secret")
		}
		if byPrevious {
			_, err := s.pool.Exec(ctx, "UPDATE webhooks SET "+column+" = $3 WHERE id = $1 AND "+column+" = $2",
				d.WebhookID, sealed[i], s.sealer.seal(plain))
			if err != nil {
				return nil, fmt.Errorf("reseal webhook secret: %w", err)
			}
		}
		secrets = append(secrets, plain)
	}
	return secrets, nil
}

// postEvent POSTs d's payload, signed with each secret, within cfg.timeout.
func postEvent(ctx context.Context, cfg webhookConfig, client *http.Client, d claimedDelivery, secrets []string) deliveryOutcome {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, strings.NewReader(d.Payload))
	if err != nil {
		return deliveryOutcome{err: err}
	}
	// The wall clock, not the store's: receivers compare the timestamp with their own clocks.
	id, timestamp := eventID(d.EventID), strconv.FormatInt(time.Now().Unix(), 10)
	signatures := make([]string, len(secrets))
	for i, secret := range secrets {
		signatures[i] = signWebhook(secret, id, timestamp, d.Payload)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "usermgmt-webhooks")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", timestamp)
	req.Header.Set("webhook-signature", strings.Join(signatures, " "))
	resp, err := client.Do(req)
	if err != nil {
		return deliveryOutcome{err: err}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxReplyBytes)) // a reply cannot hold the worker
	return deliveryOutcome{status: resp.StatusCode}
}

// signWebhook is the Standard Webhooks signature "v1,<base64 HMAC-SHA256 of id.timestamp.body>"
// under the bytes of secret ("whsec_" + base64).
func signWebhook(secret, id, timestamp, body string) string {
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, webhookSecretPrefix)) // made by newWebhookSecret
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + timestamp + "." + body))
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// webhookClient is the HTTP client of deliveries. It follows no redirects (a 3xx is a failed
// attempt) and uses no proxy from the environment, and unless cfg.allowPrivate, its dialer
// refuses every address an endpoint must not reach.
func webhookClient(cfg webhookConfig) *http.Client {
	dialer := &net.Dialer{Timeout: cfg.timeout}
	if !cfg.allowPrivate {
		// Checked on the address actually dialled, after DNS: a name that resolves, or is
		// rebound, to an internal address is refused all the same (SSRF).
		dialer.Control = func(_, address string, _ syscall.RawConn) error { return publicAddress(address) }
	}
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         dialer.DialContext,
			TLSHandshakeTimeout: cfg.timeout,
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        64,
			IdleConnTimeout:     90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

var errPrivateAddress = errors.New("refused: the address is loopback, private, link-local or unspecified (WEBHOOK_ALLOW_PRIVATE)")

// publicAddress refuses an "ip:port" that is not a public unicast address.
func publicAddress(address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	if ip := ap.Addr().Unmap(); !publicIP(ip) {
		return fmt.Errorf("dial %s: %w", ip, errPrivateAddress)
	}
	return nil
}

// internalPrefixes are ranges not public that netip has no predicate for: shared address space
// (carrier NAT, and some clouds' metadata service at 100.100.100.200), IETF protocol
// assignments, benchmarking, reserved and broadcast.
var internalPrefixes = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("240.0.0.0/4")}

// nat64 and sixToFour are IPv6 ranges that carry an IPv4 address (NAT64 in the last 32 bits,
// 6to4 in bits 16 to 48), which is checked in its turn, so that an internal IPv4 address
// cannot be reached through a translator.
var nat64, sixToFour = netip.MustParsePrefix("64:ff9b::/96"), netip.MustParsePrefix("2002::/16")

// publicIP reports whether ip is none of the addresses a webhook must not reach.
func publicIP(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() {
		return false
	}
	for _, p := range internalPrefixes {
		if p.Contains(ip) {
			return false
		}
	}
	b := ip.As16()
	switch {
	case nat64.Contains(ip):
		return publicIP(netip.AddrFrom4([4]byte(b[12:16])))
	case sixToFour.Contains(ip):
		return publicIP(netip.AddrFrom4([4]byte(b[2:6])))
	}
	return true
}

// runWebhooks delivers due events until ctx is done, at most cfg.inFlight at once, each in a
// goroutine of its own so that a slow endpoint does not hold up the others. Deliveries in
// flight when ctx ends are finished (within their timeout) before it returns.
func runWebhooks(ctx context.Context, cfg webhookConfig, st *store, logger *slog.Logger) {
	client := webhookClient(cfg)
	slots := make(chan struct{}, cfg.inFlight)
	var inFlight sync.WaitGroup
	defer inFlight.Wait()
	ticker := time.NewTicker(cfg.pollInterval)
	defer ticker.Stop()
	work := context.WithoutCancel(ctx)
	for {
	claim:
		for ctx.Err() == nil {
			select {
			case slots <- struct{}{}:
			default:
				break claim // every slot busy: look again at the next tick
			}
			d, found, err := st.claimDelivery(work, cfg)
			if err != nil || !found {
				<-slots
				if err != nil && !isUnavailable(err) {
					logger.Error("webhooks", "err", err)
				}
				break
			}
			inFlight.Add(1)
			go func() {
				defer inFlight.Done()
				defer func() { <-slots }()
				if err := st.sendDelivery(work, cfg, client, logger, d); err != nil && !isUnavailable(err) {
					logger.Error("webhooks", "err", err)
				}
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// webhookDelivery is one event's delivery to one webhook, as admins see it.
type webhookDelivery struct {
	ID            int64      `json:"id" db:"id"`
	EventID       string     `json:"event_id" db:"event_id"`
	Type          string     `json:"type" db:"type"`
	Status        string     `json:"status" db:"status"`
	Attempts      int        `json:"attempts" db:"attempts"`
	LastStatus    *int       `json:"last_status" db:"last_status"` // the last reply's HTTP status
	LastError     *string    `json:"last_error" db:"last_error"`
	NextAttemptAt *time.Time `json:"next_attempt_at" db:"next_attempt_at"` // while pending
	CreatedAt     time.Time  `json:"created_at" db:"created_at"`
	DeliveredAt   *time.Time `json:"delivered_at" db:"delivered_at"`
}

// deliveryFilter selects a page of one webhook's deliveries, optionally of one status.
type deliveryFilter struct {
	WebhookID int64
	Status    string
	page
}

func handleListDeliveries(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := webhookID(r)
		if err != nil {
			return err
		}
		return handleList(func(q url.Values) (deliveryFilter, error) {
			f := deliveryFilter{WebhookID: id, page: defaultPage}
			return f, parseListQuery(q, &f.page, func(name, value string) string {
				if name != "status" {
					return "unknown parameter"
				}
				f.Status = value
				if !slices.Contains([]string{"pending", "delivered", "failed"}, value) {
					return "must be pending, delivered or failed"
				}
				return ""
			})
		}, st.listDeliveries)(w, r)
	}
}

// listDeliveries returns a page of a webhook's deliveries, newest first, and how many match.
func (s *store) listDeliveries(ctx context.Context, f deliveryFilter) ([]webhookDelivery, int, error) {
	if _, err := queryWebhook(ctx, s.pool, f.WebhookID, ""); err != nil {
		return nil, 0, err
	}
	const where = " FROM webhook_deliveries WHERE webhook_id = $1 AND ($2 = '' OR status = $2)"
	rows, _ := s.pool.Query(ctx, `SELECT id, 'evt_' || event_id AS event_id, type, status, attempts, last_status,
		last_error, CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at, created_at, delivered_at`+
		where+" ORDER BY id DESC"+f.limitOffset(), f.WebhookID, f.Status)
	deliveries, err := pgx.CollectRows(rows, pgx.RowToStructByName[webhookDelivery])
	if err != nil {
		return nil, 0, fmt.Errorf("list webhook deliveries: %w", err)
	}
	var total int
	if err := s.pool.QueryRow(ctx, "SELECT count(*)"+where, f.WebhookID, f.Status).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count webhook deliveries: %w", err)
	}
	return deliveries, total, nil
}

func handleRetryDelivery(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := webhookID(r)
		if err != nil {
			return err
		}
		deliveryID, ok := parseID(r.PathValue("delivery_id"))
		if !ok {
			return fail(errInvalid, "Delivery id must be a positive integer")
		}
		if err := st.retryDelivery(r.Context(), currentUser(r.Context()), id, deliveryID); err != nil {
			return err
		}
		writeJSON(w, http.StatusAccepted, message{"Delivery queued"})
		return nil
	}
}

// retryDelivery queues delivery deliveryID of webhook id again, now, with its attempts
// starting over; it keeps its event id, so a consumer that has it already can tell. One being
// sent right now is a conflict.
func (s *store) retryDelivery(ctx context.Context, actor user, id, deliveryID int64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		now := s.now()
		var leased bool
		err := tx.QueryRow(ctx, `SELECT status = 'pending' AND COALESCE(leased_until > $3, false)
			FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2 FOR UPDATE`, deliveryID, id, now).Scan(&leased)
		if errors.Is(err, pgx.ErrNoRows) {
			return fail(errNotFound, "Delivery not found")
		}
		if err != nil {
			return fmt.Errorf("retry webhook delivery: %w", err)
		}
		if leased {
			return fail(errConflict, "The delivery is being sent right now")
		}
		_, err = tx.Exec(ctx, `UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2,
			leased_until = NULL, delivered_at = NULL WHERE id = $1`, deliveryID, now)
		if err != nil {
			return fmt.Errorf("retry webhook delivery: %w", err)
		}
		return s.audit(ctx, tx, auditWebhookDeliveryRetried, actor.ID, 0, map[string]any{"webhook_id": id, "delivery_id": deliveryID})
	})
}
