package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"
)

// Users created by an admin, and invitations: an account made without a password has the
// empty hash (no password matches it) until its owner accepts the invitation mailed to them
// and chooses one. Handlers and their SQL.

type createUserRequest struct {
	Username      string  `json:"username"`
	FirstName     string  `json:"first_name"`
	LastName      string  `json:"last_name"`
	Email         string  `json:"email"`
	Role          *string `json:"role"`
	Password      *string `json:"password"`
	EmailVerified bool    `json:"email_verified"`
}

// valid applies the rules of registration; without a password the user is invited to choose
// one.
func (r createUserRequest) valid(passwordMinLength int, common commonPasswords) map[string]string {
	password := ""
	if r.Password != nil {
		password = *r.Password
	}
	problems := registerRequest{r.Username, r.FirstName, r.LastName, r.Email, password}.valid(passwordMinLength, common)
	if r.Password == nil {
		delete(problems, "password")
	}
	if r.Role != nil {
		if _, ok := parseRole(*r.Role); !ok {
			problems["role"] = "must be Admin or User"
		}
	}
	return problems
}

func handleCreateUser(cfg config, st *store, pw *hasher) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[createUserRequest](w, r)
		if err != nil {
			return err
		}
		if err := invalidFields(req.valid(cfg.passwordMinLength, cfg.commonPasswords)); err != nil {
			return err
		}
		role := roleUser
		if req.Role != nil {
			role, _ = parseRole(*req.Role) // valid: spelled as stored
		}
		hash := "" // no password: an invitation
		if req.Password != nil {
			if hash, err = pw.hash(r.Context(), *req.Password); err != nil {
				return err
			}
		}
		u, err := st.createUserByAdmin(r.Context(), currentUser(r.Context()), newUser{req.Username, req.FirstName, req.LastName, req.Email},
			hash, role, req.EmailVerified)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, u)
		return nil
	}
}

func handleResendInvite(cfg config, st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := targetID(r)
		if err != nil {
			return err
		}
		if err := st.resendInvitation(r.Context(), currentUser(r.Context()), id); err != nil {
			return userNotFound(err)
		}
		writeJSON(w, http.StatusOK, message{"Invitation sent"})
		return nil
	}
}

func handleAcceptInvite(cfg config, st *store, pw *hasher) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		hashFor, err := decodeNewPassword(w, r, cfg, pw)
		if err != nil {
			return err
		}
		u, err := st.acceptInvitation(r.Context(), r.PathValue("token"), hashFor)
		if err != nil {
			return err
		}
		// The invitation proved the mailbox and the password was just chosen: a login.
		resp, err := openSession(r.Context(), cfg, st, u, accountKey(u.ID), "", amrPassword)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, resp)
		return nil
	}
}

// createUserByAdmin creates a user on behalf of actor and returns it. An empty passwordHash
// makes an invited account, which is mailed its invitation; one with a password but an
// unverified address is mailed the verification, as at registration. An address past its
// cap (checkAddressCap) gets neither, recorded as mail_not_sent: the admin re-sends the
// invitation later. A taken username or email is errConflict.
func (s *store) createUserByAdmin(ctx context.Context, actor user, u newUser, passwordHash, role string, verified bool) (user, error) {
	var created user
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		id, err := insertUser(ctx, tx, u, passwordHash, role, verified)
		if err != nil {
			return err
		}
		if created, err = queryUser(ctx, tx, "SELECT "+userColumns+" FROM users WHERE id = $1", id); err != nil {
			return err
		}
		details := map[string]any{"username": u.Username, "role": role, "invited": created.Invited}
		if err := s.audit(ctx, tx, auditUserCreated, actor.ID, id, details); err != nil {
			return err
		}
		if !created.Invited && created.EmailVerified {
			return nil // nothing to mail
		}
		mailFor := auditVerificationRequested
		if created.Invited {
			mailFor = auditInvitationSent
		}
		err = s.checkAddressCap(ctx, tx, created)
		switch {
		case errors.Is(err, errMailCapped):
			return s.audit(ctx, tx, auditMailNotSent, actor.ID, id, map[string]any{"for": mailFor})
		case err != nil:
			return err
		case created.Invited:
			return s.sendInvitation(ctx, tx, created, randomToken(), actor.ID)
		}
		return s.queueVerification(ctx, tx, created)
	})
	return created, s.takenFields(ctx, err, 0, &u.Username, &u.Email)
}

// sendInvitation makes token u's one invitation (voiding any earlier one) for its current
// address, lasting ttl, and queues the mail carrying it. Only the token's SHA-256 is stored.
// actorID is the admin who sent it, 0 for none (a reset request).
func (s *store) sendInvitation(ctx context.Context, tx pgx.Tx, u user, token string, actorID int64) error {
	ttl := s.policy.inviteTTL
	if _, err := tx.Exec(ctx, "DELETE FROM invitation_tokens WHERE user_id = $1", u.ID); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, "INSERT INTO invitation_tokens (token_hash, user_id, email, expires_at) VALUES ($1, $2, $3, $4)",
		hashToken(token), u.ID, u.Email, s.now().Add(ttl))
	if err != nil {
		return fmt.Errorf("invitation token: %w", err)
	}
	return s.mailToken(ctx, tx, actorID, u, tokenMail{mailInvite, ttl, auditInvitationSent}, token)
}

var errInvitationsCapped = fail(errTooMany, "Too many invitations to this user; try again later")

// resendInvitation sends user id a new invitation on behalf of actor. errConflict when the
// user is not invited (accepted, or made with a password) or is deactivated; a waitError
// (429) while the mail caps of an asked-for mail hold (askedMailCaps), so that no admin
// floods a mailbox.
func (s *store) resendInvitation(ctx context.Context, actor user, id int64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		u, err := queryUser(ctx, tx, "SELECT "+userColumns+" FROM users WHERE id = $1 FOR UPDATE", id)
		if err != nil {
			return err
		}
		switch {
		case !u.Invited:
			return fail(errConflict, "The user has no invitation to accept: it was accepted, or the account has a password")
		case !u.IsActive:
			return fail(errConflict, "The user is deactivated")
		}
		until, err := s.capEnd(ctx, tx, askedMailCaps(u.ID, u.Email, auditInvitationSent)...)
		if err != nil {
			return err
		}
		if until.After(s.now()) {
			return waitError{until.Sub(s.now()), errInvitationsCapped}
		}
		return s.sendInvitation(ctx, tx, u, randomToken(), actor.ID)
	})
}

// acceptInvitation consumes an invitation token and sets the password to the hash newHash
// returns for the token's user, whose address then counts as verified; it returns the user.
// newHash runs only for a good token (so bad tokens cost no bcrypt work) and before the
// transaction; its error (a password refused for that user) is returned with the token
// unused. A token works once, and only while the account is active, still invited, and has
// the address it was mailed to; otherwise errInvalid.
func (s *store) acceptInvitation(ctx context.Context, token string, newHash func(user) (string, error)) (user, error) {
	invalid := fail(errInvalid, "Invalid or expired invitation token")
	var u user
	var email string
	err := scanUser(s.pool.QueryRow(ctx, `SELECT `+qualifiedUserColumns+`, t.email FROM invitation_tokens t
		JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1 AND t.expires_at > $2 AND u.is_active AND u.password_hash = ''`,
		hashToken(token), s.now()), &u, &email)
	if errors.Is(err, errNotFound) {
		return user{}, invalid
	}
	if err != nil {
		return user{}, fmt.Errorf("look up invitation: %w", err)
	}
	passwordHash, err := newHash(u)
	if err != nil {
		return user{}, err
	}
	var accepted user
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The user row before the token, the order of every transaction that writes both. The
		// conditions again: a concurrent acceptance, deactivation or change of address wins.
		var err error
		accepted, err = queryUser(ctx, tx, `UPDATE users SET password_hash = $2, email_verified = true, updated_at = now()
			WHERE id = $1 AND is_active AND password_hash = '' AND lower(email COLLATE "C") = lower($3 COLLATE "C")
			RETURNING `+userColumns, u.ID, passwordHash, email)
		if errors.Is(err, errNotFound) {
			return invalid
		}
		if err != nil {
			return fmt.Errorf("accept invitation: %w", err)
		}
		if err := s.consumeToken(ctx, tx, "invitation_tokens", token, u.ID, invalid); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditInvitationAccepted, u.ID, u.ID, map[string]any{"email": email})
	})
	return accepted, err
}
