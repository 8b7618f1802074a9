package main

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The audit log: one row per security-relevant event, written in the transaction of the change
// it records, so that a change and its record stand or fall together.

// Audit actions, each listed in auditActions.
const (
	auditRegister             = "register"
	auditAdminCreated         = "admin_created"
	auditLoginSucceeded       = "login_succeeded"
	auditLoginFailed          = "login_failed"
	auditLogout               = "logout"
	auditLogoutAll            = "logout_all"
	auditSessionRevoked       = "session_revoked"
	auditRefreshTokenReused   = "refresh_token_reused"
	auditPasswordChanged      = "password_changed"
	auditPasswordChangeFailed = "password_change_failed"
	auditPasswordResetRequest = "password_reset_requested"
	auditPasswordReset        = "password_reset"
	// A request for a reset or verification mail that sent none (no such account, or the cap
	// reached).
	auditMailNotSent           = "mail_not_sent"
	auditVerificationRequested = "email_verification_requested"
	auditEmailVerified         = "email_verified"
	auditProfileUpdated        = "profile_updated"
	auditRoleChanged           = "role_changed"
	auditActivationChanged     = "activation_changed"
	auditUserDeleted           = "user_deleted"
	auditUserCreated           = "user_created" // by an admin, the actor
	auditInvitationSent        = "invitation_sent"
	auditInvitationAccepted    = "invitation_accepted"
	// Two-factor login.
	auditMFAEnabled                = "mfa_enabled"
	auditMFADisabled               = "mfa_disabled"
	auditMFACodeFailed             = "mfa_code_failed"
	auditMFACodeReused             = "mfa_code_reused"
	auditMFARecoveryCodeUsed       = "mfa_recovery_code_used"
	auditMFARecoveryCodesGenerated = "mfa_recovery_codes_regenerated"
	auditMFAPasswordFailed         = "mfa_password_failed"
	// Changes to webhooks (details name the webhook): none of them is an event.
	auditWebhookCreated         = "webhook_created"
	auditWebhookUpdated         = "webhook_updated"
	auditWebhookDeleted         = "webhook_deleted"
	auditWebhookSecretRotated   = "webhook_secret_rotated"
	auditWebhookPinged          = "webhook_pinged"
	auditWebhookDeliveryRetried = "webhook_delivery_retried"
)

// auditActions are the actions the audit log filter knows.
var auditActions = []string{auditRegister, auditAdminCreated, auditLoginSucceeded, auditLoginFailed, auditLogout,
	auditLogoutAll, auditSessionRevoked, auditRefreshTokenReused, auditPasswordChanged, auditPasswordChangeFailed,
	auditPasswordResetRequest, auditPasswordReset, auditMailNotSent, auditVerificationRequested, auditEmailVerified,
	auditProfileUpdated, auditRoleChanged, auditActivationChanged, auditUserDeleted, auditUserCreated,
	auditInvitationSent, auditInvitationAccepted, auditMFAEnabled, auditMFADisabled, auditMFACodeFailed,
	auditMFACodeReused, auditMFARecoveryCodeUsed, auditMFARecoveryCodesGenerated, auditMFAPasswordFailed,
	auditWebhookCreated, auditWebhookUpdated, auditWebhookDeleted, auditWebhookSecretRotated, auditWebhookPinged,
	auditWebhookDeliveryRetried}

// webhookEvents maps the audit actions that are webhook events to their event type (published
// in the README): an action not listed here is no event. A new action that is one is one line.
var webhookEvents = map[string]string{
	auditRegister:           "user.created",
	auditAdminCreated:       "user.created",
	auditUserCreated:        "user.created",
	auditProfileUpdated:     "user.updated",
	auditUserDeleted:        "user.deleted",
	auditEmailVerified:      "user.email_verified",
	auditInvitationAccepted: "user.email_verified", // the invitation proved the address
	auditPasswordChanged:    "user.password_changed",
	auditPasswordReset:      "user.password_changed",
	auditRoleChanged:        "user.role_changed",
	auditActivationChanged:  "user.activation_changed",
	auditLoginSucceeded:     "session.created",
	auditLogout:             "session.revoked",
	auditLogoutAll:          "session.revoked",
	auditSessionRevoked:     "session.revoked",
	auditRefreshTokenReused: "session.revoked",
	auditMFAEnabled:         "mfa.enabled",
	auditMFADisabled:        "mfa.disabled",
}

// auditEvent is one row of the audit log. A zero ActorID or TargetID means none.
type auditEvent struct {
	ID        int64          `json:"id" db:"id"`
	CreatedAt time.Time      `json:"created_at" db:"created_at"`
	Action    string         `json:"action" db:"action"`
	ActorID   *int64         `json:"actor_id" db:"actor_id"`
	TargetID  *int64         `json:"target_id" db:"target_id"`
	IP        string         `json:"ip" db:"ip"`
	Details   map[string]any `json:"details" db:"details"`
}

// audit writes one event inside tx; the client address comes from the request context. An
// action that is a webhook event is queued, in the same transaction, to every enabled webhook
// subscribed to its type.
func (s *store) audit(ctx context.Context, tx pgx.Tx, action string, actorID, targetID int64, details map[string]any) error {
	_, err := s.auditRow(ctx, tx, action, actorID, targetID, details)
	return err
}

// auditRow is audit returning the row written, whose id is the id of its event.
func (s *store) auditRow(ctx context.Context, tx pgx.Tx, action string, actorID, targetID int64, details map[string]any) (auditEvent, error) {
	if details == nil {
		details = map[string]any{}
	}
	e := auditEvent{CreatedAt: s.now(), Action: action, IP: originOf(ctx).ip, Details: details}
	eventType := webhookEvents[action]
	var subscribed bool // whether any webhook wants the event: none, and no more queries are made
	raw, err := jsonText(details)
	if err == nil {
		err = tx.QueryRow(ctx, `INSERT INTO audit_log (created_at, action, actor_id, target_id, ip, details)
			VALUES ($1, $2, NULLIF($3::bigint, 0), NULLIF($4::bigint, 0), $5, $6)
			RETURNING id, actor_id, target_id, $7::text <> '' AND EXISTS (SELECT 1 FROM webhooks
				WHERE enabled AND events && ARRAY[$7::text, '*'])`,
			e.CreatedAt, action, actorID, targetID, e.IP, raw, eventType).Scan(&e.ID, &e.ActorID, &e.TargetID, &subscribed)
	}
	if err == nil && subscribed {
		err = s.enqueueEvent(ctx, tx, e, eventType, 0)
	}
	if err != nil {
		return e, fmt.Errorf("audit %s: %w", action, err)
	}
	return e, nil
}

// auditFailure records a failed authentication (a login, a wrong current password), which
// changes nothing and so has no transaction of its own.
func (s *store) auditFailure(ctx context.Context, action string, actorID, targetID int64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return s.audit(ctx, tx, action, actorID, targetID, nil)
	})
}

// auditFilter selects a page of the audit log. A nil time is no bound: a zero one (year 1)
// is a bound like any other.
type auditFilter struct {
	UserID int64 // actor or target
	Action string
	Since  *time.Time
	Until  *time.Time
	page
}

// listAudit returns a page of events, newest first, and the number matching in all.
func (s *store) listAudit(ctx context.Context, f auditFilter) ([]auditEvent, int, error) {
	where, args := f.where()
	rows, _ := s.pool.Query(ctx, "SELECT id, created_at, action, actor_id, target_id, ip, details FROM audit_log"+
		where+" ORDER BY id DESC"+f.limitOffset(), args...)
	events, err := pgx.CollectRows(rows, pgx.RowToStructByName[auditEvent])
	if err != nil {
		return nil, 0, fmt.Errorf("list audit log: %w", err)
	}
	var total int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM audit_log"+where, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count audit log: %w", err)
	}
	return events, total, nil
}

// where builds the WHERE clause of an audit-log page from the filters given. Each parameter
// is typed explicitly: left to infer it from "$1 = 0", PostgreSQL took a user id for a 32-bit
// integer, and one past 2147483647 failed with a 500.
func (f auditFilter) where() (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, arg any) { // cond takes its parameter as %[1]d
		args = append(args, arg)
		conds = append(conds, fmt.Sprintf(cond, len(args)))
	}
	if f.UserID != 0 {
		add("(actor_id = $%[1]d::bigint OR target_id = $%[1]d::bigint)", f.UserID)
	}
	if f.Action != "" {
		add("action = $%[1]d::text", f.Action)
	}
	if f.Since != nil {
		add("created_at >= $%[1]d::timestamptz", *f.Since)
	}
	if f.Until != nil {
		add("created_at < $%[1]d::timestamptz", *f.Until)
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

func parseAuditFilter(q url.Values) (auditFilter, error) {
	f := auditFilter{page: defaultPage}
	err := parseListQuery(q, &f.page, func(name, value string) string {
		switch name {
		case "user_id":
			id, ok := parseID(value)
			f.UserID = id
			if !ok {
				return "must be a positive integer"
			}
		case "action":
			f.Action = value
			if !slices.Contains(auditActions, value) {
				return "is not an audit action"
			}
		case "since", "until":
			t, err := time.Parse(time.RFC3339, value)
			if name == "since" {
				f.Since = &t
			} else {
				f.Until = &t
			}
			if err != nil {
				return "must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z"
			}
		default:
			return "unknown parameter"
		}
		return ""
	})
	return f, err
}
