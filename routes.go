package main

import (
	"log/slog"
	"net/http"
	"slices"
	"strings"
)

// newServer returns the service's whole HTTP handler; pw does its bcrypt work.
func newServer(cfg config, st *store, pw *hasher, logger *slog.Logger) http.Handler {
	mux := &methodsMux{ServeMux: http.NewServeMux()}
	addRoutes(mux, cfg, st, pw, logger)
	return withRequestState(cfg.trustedProxies, logRequests(logger, st.metrics, secureHeaders(
		withCORS(cfg.cors, mux.ServeMux, mux.methods, jsonMuxErrors(mux.ServeMux)))))
}

// methodsMux is a mux that remembers the methods of its routes, which CORS preflights ask for,
// in the order of the mux's Allow header.
type methodsMux struct {
	*http.ServeMux
	methods []string
}

func (m *methodsMux) Handle(pattern string, handler http.Handler) {
	if method, _, _ := strings.Cut(pattern, " "); !slices.Contains(m.methods, method) {
		m.methods = append(m.methods, method)
		slices.Sort(m.methods)
	}
	m.ServeMux.Handle(pattern, handler)
}

// The paths that mailed links name, followed by the token: routes, default links and the
// mails' API hints all use these.
const (
	resetPasswordPath = "/api/auth/reset-password/"
	verifyEmailPath   = "/api/auth/verify-email/"
	acceptInvitePath  = "/api/auth/accept-invite/"
)

// routeAdder is the part of a mux that addRoutes uses; tests pass one that records the
// patterns, so that checks over every route cover a new route without being told of it.
type routeAdder interface {
	Handle(pattern string, handler http.Handler)
}

// addRoutes lists the whole API and what guards each route.
func addRoutes(mux routeAdder, cfg config, st *store, pw *hasher, logger *slog.Logger) {
	authed := requireAuth(cfg, st, logger)
	admin := func(h http.Handler) http.Handler { return authed(requireAdmin(logger)(h)) }
	limited := limitAuth(cfg, st, logger)
	api := serveAPI(logger)

	mux.Handle("GET /healthz", handleHealth(st))

	mux.Handle("POST /api/auth/register", limited(api(handleRegister(cfg, st, pw))))
	mux.Handle("POST /api/auth/login", limited(api(handleLogin(cfg, st, pw))))
	mux.Handle("POST /api/auth/mfa/verify", limited(api(handleMFAVerify(cfg, st))))
	mux.Handle("POST /api/auth/refresh", limited(api(handleRefresh(cfg, st))))
	mux.Handle("POST /api/auth/logout", authed(api(handleLogout(st))))
	mux.Handle("POST /api/auth/logout-all", authed(api(handleLogoutAll(st))))
	mux.Handle("POST /api/auth/password-reset-request", limited(api(handlePasswordResetRequest(cfg, st))))
	mux.Handle("POST "+resetPasswordPath+"{token}", limited(api(handleResetPassword(cfg, st, pw))))
	mux.Handle("POST /api/auth/change-password", authed(api(handleChangePassword(cfg, st, pw))))
	mux.Handle("POST "+verifyEmailPath+"{token}", limited(api(handleVerifyEmail(st))))
	mux.Handle("POST /api/auth/resend-verification", limited(api(handleResendVerification(st))))
	mux.Handle("POST "+acceptInvitePath+"{token}", limited(api(handleAcceptInvite(cfg, st, pw))))

	mux.Handle("GET /api/users/me", authed(api(handleMe())))
	mux.Handle("GET /api/users/me/sessions", authed(api(handleListSessions(st))))
	mux.Handle("DELETE /api/users/me/sessions/{id}", authed(api(handleRevokeSession(st))))
	mux.Handle("POST /api/users/me/mfa/totp", authed(api(handleMFAEnrol(cfg, st, pw))))
	mux.Handle("POST /api/users/me/mfa/totp/confirm", authed(api(handleMFAConfirm(st))))
	mux.Handle("POST /api/users/me/mfa/recovery-codes", authed(api(handleMFARecoveryCodes(cfg, st, pw))))
	mux.Handle("DELETE /api/users/me/mfa", authed(api(handleMFADisable(cfg, st, pw))))
	mux.Handle("GET /api/users/{id}", authed(api(handleGetUser(st))))
	mux.Handle("PUT /api/users/{id}", authed(api(handleUpdateUser(st))))
	mux.Handle("PATCH /api/users/{id}", authed(api(handleUpdateUser(st))))
	mux.Handle("DELETE /api/users/{id}", admin(api(handleDeleteUser(st))))
	mux.Handle("DELETE /api/users/{id}/mfa", admin(api(handleMFAAdminRemove(st))))

	mux.Handle("GET /api/admin/users", admin(api(handleList(parseUserFilter, st.listUsers))))
	mux.Handle("POST /api/admin/users", admin(api(handleCreateUser(cfg, st, pw))))
	mux.Handle("POST /api/admin/users/{id}/invite", admin(api(handleResendInvite(cfg, st))))
	mux.Handle("GET /api/admin/audit-log", admin(api(handleList(parseAuditFilter, st.listAudit))))

	mux.Handle("POST /api/admin/webhooks", admin(api(handleCreateWebhook(cfg.webhook, st))))
	mux.Handle("GET /api/admin/webhooks", admin(api(handleListWebhooks(st))))
	mux.Handle("GET /api/admin/webhooks/{id}", admin(api(handleGetWebhook(st))))
	mux.Handle("PATCH /api/admin/webhooks/{id}", admin(api(handleUpdateWebhook(cfg.webhook, st))))
	mux.Handle("DELETE /api/admin/webhooks/{id}", admin(api(handleDeleteWebhook(st))))
	mux.Handle("POST /api/admin/webhooks/{id}/rotate-secret", admin(api(handleRotateWebhookSecret(st))))
	mux.Handle("POST /api/admin/webhooks/{id}/ping", admin(api(handlePingWebhook(st))))
	mux.Handle("GET /api/admin/webhooks/{id}/deliveries", admin(api(handleListDeliveries(st))))
	mux.Handle("POST /api/admin/webhooks/{id}/deliveries/{delivery_id}/retry", admin(api(handleRetryDelivery(st))))
	if cfg.apiDocs {
		mux.Handle("GET /openapi.json", handleOpenAPI())
		mux.Handle("GET /docs", handleDocs())
		mux.Handle("GET /docs/{file}", api(handleDocsFile()))
		mux.Handle("GET /{$}", handleDocsRedirect())
	}
}
