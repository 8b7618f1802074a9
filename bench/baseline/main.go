// Command baseline is the bar `make bench` measures usermgmt against: the smallest honest server
// of the same architecture (net/http, a pgx pool of the service's size, the bench database),
// with no authentication, no logging and no middleware. What usermgmt spends beyond it is what
// its guarantees cost. Settings: DATABASE_URL, ADDR (default 127.0.0.1:0).
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// userRow holds the columns GET /api/users/me reads, in the JSON of its reply.
type userRow struct {
	ID            int64           `json:"id"`
	Username      string          `json:"username"`
	FirstName     string          `json:"first_name"`
	LastName      string          `json:"last_name"`
	Email         string          `json:"email"`
	Role          string          `json:"role"`
	IsActive      bool            `json:"is_active"`
	EmailVerified bool            `json:"email_verified"`
	MFAEnabled    bool            `json:"mfa_enabled"`
	CreatedAt     time.Time       `json:"created_at"`
	UpdatedAt     time.Time       `json:"updated_at"`
	Invited       bool            `json:"invited"`
	UserMetadata  json.RawMessage `json:"user_metadata"`
	AppMetadata   json.RawMessage `json:"app_metadata"`
	PasswordHash  string          `json:"-"`
	TokenVersion  int64           `json:"-"`
}

const userSQL = `SELECT id, username, first_name, last_name, email, role, is_active, email_verified,
	mfa_enabled, created_at, updated_at, password_hash = '', user_metadata, app_metadata, password_hash,
	token_version FROM users WHERE id = $1`

// refreshSQL is one transaction of a refresh's shape, in one statement as the service's is: lock
// a session, insert a refresh token, update the session.
const refreshSQL = `WITH session AS (SELECT id FROM sessions WHERE id = $1 FOR NO KEY UPDATE),
	issued AS (INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
		SELECT $2, id, $3 FROM session),
	extended AS (UPDATE sessions s SET last_used_at = $4 FROM session WHERE s.id = session.id)
	SELECT id FROM session`

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	cfg, err := pgxpool.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	cfg.MaxConns = int32(max(4, 2*runtime.NumCPU())) // the service's pool size
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
		var u userRow
		err := pool.QueryRow(r.Context(), userSQL, id).Scan(&u.ID, &u.Username, &u.FirstName, &u.LastName,
			&u.Email, &u.Role, &u.IsActive, &u.EmailVerified, &u.MFAEnabled, &u.CreatedAt, &u.UpdatedAt,
			&u.Invited, &u.UserMetadata, &u.AppMetadata, &u.PasswordHash, &u.TokenVersion)
		reply(w, u, err)
	})
	mux.HandleFunc("POST /refresh", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			SessionID int64 `json:"session_id"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		token := make([]byte, 32) // stored as the service stores a token's hash
		_, _ = rand.Read(token)
		now := time.Now()
		err := pool.QueryRow(r.Context(), refreshSQL, req.SessionID, token, now.Add(time.Hour), now).Scan(&req.SessionID)
		reply(w, req, err)
	})
	ln, err := net.Listen("tcp", cmp.Or(os.Getenv("ADDR"), "127.0.0.1:0"))
	if err != nil {
		return err
	}
	fmt.Printf("msg=listening addr=%s\n", ln.Addr()) // the line bench/run.sh reads the address from
	return (&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}).Serve(ln)
}

func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
