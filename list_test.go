package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Tests of GET /api/admin/users: paging, links, filters, search and sorting.

// listLinks parses a Link header into the query of each rel, checking every target is
// the list's path.
func listLinks(t testing.TB, header string) map[string]url.Values {
	t.Helper()
	links := map[string]url.Values{}
	for _, part := range strings.Split(header, ", ") {
		target, params, ok := strings.Cut(part, ">; ")
		rel, relOK := strings.CutPrefix(params, "rel=")
		if !ok || !strings.HasPrefix(target, "<") || !relOK {
			t.Fatalf("malformed Link %q", header)
		}
		u, err := url.Parse(strings.TrimPrefix(target, "<"))
		if err != nil || u.Path != "/api/admin/users" {
			t.Fatalf("Link target %q: %v", target, err)
		}
		links[strings.Trim(rel, `"`)] = u.Query()
	}
	return links
}

// seedUsers adds n users by SQL, in an order where id, username, email and created_at
// all sort differently, and with a few names the search cases look for. Every username has
// three characters and every email local part too, so that byte order and any collation agree.
func seedUsers(t testing.TB, env *testEnv, n int) {
	t.Helper()
	base := env.clock.Now().Add(-24 * time.Hour)
	special := map[int][2]string{ // first and last names
		3:  {"Zebedee", "Last"},
		4:  {"First", "Quokkason"},
		5:  {"50% off", "Last"},
		6:  {"50 percent", "Last"},
		7:  {"First", "a_b"},
		8:  {"First", "axb"},
		9:  {"First", `back\slash`},
		11: {"First", "ksea"},
	}
	for i := range n {
		username := fmt.Sprintf("u%02d", i*7%n)
		if i%2 == 1 {
			username = strings.ToUpper(username)
		}
		names, ok := special[i]
		if !ok {
			names = [2]string{"First", "Last"}
		}
		role := roleUser
		if i%10 == 0 {
			role = roleAdmin
		}
		created := base.Add(time.Duration(i*13%n) * time.Minute)
		_, err := env.st.pool.Exec(context.Background(), `INSERT INTO users
			(username, first_name, last_name, email, password_hash, role, is_active, created_at, updated_at)
			VALUES ($1, $2, $3, $4, 'not-a-hash', $5, $6, $7, $7)`,
			username, names[0], names[1], fmt.Sprintf("e%02d@example.com", i*11%n), role, i%7 != 1, created)
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestUsersAdminList(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	root := env.addUser(t, "root", roleAdmin)
	seedUsers(t, env, 30)
	const total = 31
	token := env.tokenFor(t, root)

	list := func(t *testing.T, query string) (response, []user) {
		t.Helper()
		r := env.do(t, "GET", "/api/admin/users"+query, token, nil).expect(t, http.StatusOK)
		var raws []json.RawMessage
		if err := json.Unmarshal(r.body, &raws); err != nil || raws == nil {
			t.Fatalf("body is not a JSON array: %v: %s", err, r.body)
		}
		users := make([]user, len(raws))
		for i, raw := range raws {
			users[i] = decodeUser(t, raw)
		}
		return r, users
	}
	ids := func(users []user) []int64 {
		out := make([]int64, len(users))
		for i, u := range users {
			out[i] = u.ID
		}
		return out
	}
	checkTotal := func(t *testing.T, r response, want int) {
		t.Helper()
		if got := r.header.Get("X-Total-Count"); got != strconv.Itoa(want) {
			t.Errorf("X-Total-Count %q, want %d", got, want)
		}
	}

	// Everything, by default in id order, is the reference for the other cases.
	r, all := list(t, "")
	checkTotal(t, r, total)
	if len(all) != total {
		t.Fatalf("%d users listed by default, want %d", len(all), total)
	}
	if !slices.IsSortedFunc(all, func(a, b user) int { return int(a.ID - b.ID) }) {
		t.Errorf("default order is not by id: %v", ids(all))
	}
	links := listLinks(t, r.header.Get("Link"))
	if links["first"].Get("page") != "1" || links["last"].Get("page") != "1" || links["prev"] != nil || links["next"] != nil {
		t.Errorf("Link on the only page: %q", r.header.Get("Link"))
	}
	if links["first"].Get("per_page") != "50" {
		t.Errorf("Link per_page %q, want the default 50", links["first"].Get("per_page"))
	}

	t.Run("pages", func(t *testing.T) {
		t.Parallel()
		const perPage, last = 7, 5
		var seen []int64
		for page := 1; page <= last; page++ {
			r, users := list(t, fmt.Sprintf("?page=%d&per_page=%d", page, perPage))
			checkTotal(t, r, total)
			seen = append(seen, ids(users)...)
			if want := min(perPage, total-(page-1)*perPage); len(users) != want {
				t.Errorf("page %d has %d users, want %d", page, len(users), want)
			}
			links := listLinks(t, r.header.Get("Link"))
			want := map[string]string{"first": "1", "last": strconv.Itoa(last)}
			if page > 1 {
				want["prev"] = strconv.Itoa(page - 1)
			}
			if page < last {
				want["next"] = strconv.Itoa(page + 1)
			}
			if len(links) != len(want) {
				t.Errorf("page %d: Link rels %q, want %v", page, r.header.Get("Link"), want)
			}
			for rel, p := range want {
				if links[rel].Get("page") != p || links[rel].Get("per_page") != strconv.Itoa(perPage) {
					t.Errorf("page %d: rel %s is %v, want page %s per_page %d", page, rel, links[rel], p, perPage)
				}
			}
		}
		if !slices.Equal(seen, ids(all)) {
			t.Errorf("pages together give %v, want %v", seen, ids(all))
		}
	})

	t.Run("links keep the filters", func(t *testing.T) {
		t.Parallel()
		r, users := list(t, "?role=user&per_page=10&page=2&sort=-email")
		checkTotal(t, r, 27)
		if len(users) != 10 {
			t.Errorf("%d users, want 10", len(users))
		}
		for rel, q := range listLinks(t, r.header.Get("Link")) {
			if q.Get("role") != "user" || q.Get("sort") != "-email" || q.Get("per_page") != "10" {
				t.Errorf("rel %s lost the filters: %v", rel, q)
			}
		}
	})

	t.Run("past the end", func(t *testing.T) {
		t.Parallel()
		r, users := list(t, "?page=9&per_page=7")
		checkTotal(t, r, total)
		if len(users) != 0 || strings.TrimSpace(string(r.body)) != "[]" {
			t.Errorf("body %s, want []", r.body)
		}
		if last := listLinks(t, r.header.Get("Link"))["last"].Get("page"); last != "5" {
			t.Errorf("last page %s, want 5", last)
		}
		r, _ = list(t, "?q=nothing-matches-this")
		checkTotal(t, r, 0)
		if strings.TrimSpace(string(r.body)) != "[]" {
			t.Errorf("body %s, want []", r.body)
		}
	})

	filters := []struct {
		query string
		match func(u user) bool
	}{
		{"?q=zebe", func(u user) bool { return u.FirstName == "Zebedee" }},
		{"?q=QUOKKA", func(u user) bool { return u.LastName == "Quokkason" }},
		{"?q=u07", func(u user) bool { return u.Username == "U07" }},
		{"?q=U08", func(u user) bool { return u.Username == "u08" }},
		{"?q=E11%40EXAMPLE", func(u user) bool { return u.Email == "e11@example.com" }},
		{"?q=ROOT", func(u user) bool { return u.Username == "root" }},
		{"?q=example.COM", func(user) bool { return true }},
		{"?q=50%25", func(u user) bool { return u.FirstName == "50% off" }},
		{"?q=a_b", func(u user) bool { return u.LastName == "a_b" }},
		{"?q=_", func(u user) bool { return strings.Contains(u.LastName, "_") }},
		{"?q=%25", func(u user) bool { return strings.Contains(u.FirstName, "%") }},
		{`?q=k%5Cs`, func(u user) bool { return u.LastName == `back\slash` }},
		{"?role=admin", func(u user) bool { return u.Role == roleAdmin }},
		{"?role=ADMIN", func(u user) bool { return u.Role == roleAdmin }},
		{"?role=User", func(u user) bool { return u.Role == roleUser }},
		{"?is_active=false", func(u user) bool { return !u.IsActive }},
		{"?is_active=true", func(u user) bool { return u.IsActive }},
		{"?role=user&is_active=false", func(u user) bool { return u.Role == roleUser && !u.IsActive }},
		{"?q=first&role=admin&is_active=true", func(u user) bool {
			return u.Role == roleAdmin && u.IsActive && strings.Contains(strings.ToLower(u.FirstName), "first")
		}},
	}
	for _, f := range filters {
		t.Run("filter "+f.query, func(t *testing.T) {
			t.Parallel()
			want := slices.DeleteFunc(slices.Clone(all), func(u user) bool { return !f.match(u) })
			if len(want) == 0 {
				t.Fatalf("the seed has no user for %s", f.query)
			}
			r, got := list(t, f.query)
			checkTotal(t, r, len(want))
			if !slices.Equal(ids(got), ids(want)) {
				t.Errorf("got %v, want %v", ids(got), ids(want))
			}
		})
	}

	keys := map[string]func(user) string{
		"id":         func(u user) string { return fmt.Sprintf("%020d", u.ID) },
		"username":   func(u user) string { return strings.ToLower(u.Username) },
		"email":      func(u user) string { return strings.ToLower(u.Email) },
		"created_at": func(u user) string { return u.CreatedAt.Format("2006-01-02T15:04:05.000000") },
	}
	for name, key := range keys {
		for _, desc := range []bool{false, true} {
			sortParam := name
			if desc {
				sortParam = "-" + name
			}
			t.Run("sort "+sortParam, func(t *testing.T) {
				t.Parallel()
				want := slices.Clone(all)
				slices.SortFunc(want, func(a, b user) int {
					c := strings.Compare(key(a), key(b))
					if desc {
						c = -c
					}
					return c
				})
				if name != "id" && slices.Equal(ids(want), ids(all)) {
					t.Fatalf("the seed does not tell sort=%s from sort by id", name)
				}
				_, got := list(t, "?per_page=200&sort="+sortParam)
				if !slices.Equal(ids(got), ids(want)) {
					t.Errorf("got %v, want %v", ids(got), ids(want))
				}
				_, page := list(t, "?per_page=4&page=3&sort="+sortParam)
				if !slices.Equal(ids(page), ids(want[8:12])) {
					t.Errorf("page 3 of 4: got %v, want %v", ids(page), ids(want[8:12]))
				}
			})
		}
	}

	badParams := []struct {
		query string
		names []string
	}{
		{"?page=0", []string{"page"}},
		{"?page=abc", []string{"page"}},
		{"?page=-1", []string{"page"}},
		{"?per_page=201", []string{"per_page"}},
		{"?per_page=0", []string{"per_page"}},
		{"?sort=password", []string{"sort"}},
		{"?sort=-password_hash", []string{"sort"}},
		{"?role=root", []string{"role"}},
		{"?is_active=maybe", []string{"is_active"}},
		{"?admin=1", []string{"admin"}},
		{"?page=1&page=2", []string{"page"}},
		{"?role=user&role=admin", []string{"role"}},
		{"?page=0&sort=password&foo=1&per_page=1", []string{"foo", "page", "sort"}},
	}
	for _, b := range badParams {
		t.Run("bad "+b.query, func(t *testing.T) {
			t.Parallel()
			r := env.do(t, "GET", "/api/admin/users"+b.query, token, nil).expect(t, http.StatusBadRequest)
			if got := errorFields(t, r); !slices.Equal(got, b.names) {
				t.Errorf("errors name %v, want %v; body: %s", got, b.names, r.body)
			}
		})
	}

	for _, query := range []string{"?per_page=50%", "?per_page=5;x=1", "?q=%zz"} {
		t.Run("malformed "+query, func(t *testing.T) {
			t.Parallel()
			r := env.do(t, "GET", "/api/admin/users"+query, token, nil).expect(t, http.StatusBadRequest)
			if msg := r.message(t); msg != "The query string is malformed" {
				t.Errorf("message %q", msg)
			}
		})
	}

	t.Run("not an admin", func(t *testing.T) {
		t.Parallel()
		// A seeded active user: adding one here would change the other cases' totals.
		i := slices.IndexFunc(all, func(u user) bool { return u.Role == roleUser && u.IsActive })
		plain := reload(t, env, all[i])
		env.do(t, "GET", "/api/admin/users", env.tokenFor(t, plain), nil).expect(t, http.StatusForbidden)
		env.do(t, "GET", "/api/admin/users", "", nil).expect(t, http.StatusUnauthorized)
	})
}

// TestUserListPagesAcrossIDBlocks: the pages of every user in id order, read through the
// counts of user_id_blocks, are the pages plain OFFSET gives, in both directions, for page
// sizes and positions that start inside, at and across block boundaries, after inserts and
// deletes of one user or of many in one statement; and the total is count(*).
func TestUserListPagesAcrossIDBlocks(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	exec := func(sql string) {
		t.Helper()
		if _, err := env.st.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO users (username, first_name, last_name, email, password_hash)
		SELECT 'b' || i, 'F', 'L', 'b' || i || '@example.com', 'not-a-hash' FROM generate_series(1, 3000) AS i`)
	exec("DELETE FROM users WHERE id % 7 = 3 OR id BETWEEN 1000 AND 1100") // many, across a block boundary
	exec("DELETE FROM users WHERE id = 2048")                              // one, the first of a block
	env.addUser(t, "late", roleUser)                                       // one more, by the API's path
	check := func(sort string, p page) {
		t.Helper()
		users, total, err := env.st.listUsers(ctx, userFilter{Sort: sort, page: p})
		if err != nil {
			t.Fatal(err)
		}
		direction := map[string]string{"id": "", "-id": " DESC"}[sort]
		rows, _ := env.st.pool.Query(ctx, fmt.Sprintf("SELECT id FROM users ORDER BY id%s LIMIT %d OFFSET %d",
			direction, p.PerPage, (p.Page-1)*p.PerPage))
		want, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		got := make([]int64, len(users))
		for i, u := range users {
			got[i] = u.ID
		}
		var count int
		if err := env.st.pool.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&count); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) || total != count {
			t.Errorf("sort %s page %d of %d: ids %v (total %d), want %v (total %d)", sort, p.Page, p.PerPage, got, total, want, count)
		}
	}
	for _, sort := range []string{"id", "-id"} {
		for _, perPage := range []int{1, 7, 50, 100} {
			for _, position := range []int{0, 1, 877, 878, 900, 1023, 1024, 1500, 1750, 2200, 2571, 2572, 2600, 5000} {
				check(sort, page{Page: position/perPage + 1, PerPage: perPage})
			}
		}
	}
}
