package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Paginated lists (users, audit log): their query parameters, pages and Link headers.

// handleList serves one page of a list: parse reads the query string into a filter, list
// fetches the matching page and the number of matches in all.
func handleList[F interface{ pagination() page }, T any](parse func(url.Values) (F, error),
	list func(context.Context, F) ([]T, int, error)) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		// r.URL.Query() would drop malformed pairs ("per_page=50%") and serve the default.
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			return fail(errInvalid, "The query string is malformed")
		}
		f, err := parse(q)
		if err != nil {
			return err
		}
		items, total, err := list(r.Context(), f)
		if err != nil {
			return err
		}
		writePage(w, r, f.pagination(), total, items)
		return nil
	}
}

// parseListQuery reads a list's query string: page and per_page into p, every other parameter
// through param, which returns what is wrong with it ("" when nothing). Every bad parameter is
// named; a parameter given twice is bad.
func parseListQuery(q url.Values, p *page, param func(name, value string) string) error {
	problems := map[string]string{}
	for name, values := range q {
		switch {
		case len(values) > 1:
			problems[name] = "must be given once"
		case p.parse(problems, name, values[0]):
		default:
			check(problems, name, param(name, values[0]))
		}
	}
	return invalidFields(problems)
}

// page is the pagination of a list: page (from 1) and per_page (1 to 200, default 50).
type page struct {
	Page    int
	PerPage int
}

var defaultPage = page{Page: 1, PerPage: 50}

const maxPerPage = 200

// parse takes the query parameter name if it is page or per_page, recording a bad value in
// problems, and reports whether it was one of them.
func (p *page) parse(problems map[string]string, name, value string) bool {
	var target *int
	low, high := 1, 1<<31-1
	switch name {
	case "page":
		target = &p.Page
	case "per_page":
		target, high = &p.PerPage, maxPerPage
	default:
		return false
	}
	n, err := strconv.Atoi(value)
	if err != nil || n < low || n > high {
		problems[name] = fmt.Sprintf("must be an integer from %d to %d", low, high)
	}
	*target = n
	return true
}

func (p page) pagination() page { return p }

// limitOffset is the page's SQL LIMIT and OFFSET (numbers checked by parse).
func (p page) limitOffset() string {
	return fmt.Sprintf(" LIMIT %d OFFSET %d", p.PerPage, (p.Page-1)*p.PerPage)
}

// writePage replies with one page of items, the total count in X-Total-Count and an RFC 8288
// Link header with the first, prev, next and last pages.
func writePage(w http.ResponseWriter, r *http.Request, p page, total int, items any) {
	last := max(1, (total+p.PerPage-1)/p.PerPage)
	link := func(n int, rel string) string {
		q := r.URL.Query()
		q.Set("page", strconv.Itoa(n))
		q.Set("per_page", strconv.Itoa(p.PerPage))
		return fmt.Sprintf(`<%s?%s>; rel="%s"`, r.URL.Path, q.Encode(), rel)
	}
	links := []string{link(1, "first")}
	if p.Page > 1 {
		links = append(links, link(min(p.Page-1, last), "prev"))
	}
	if p.Page < last {
		links = append(links, link(p.Page+1, "next"))
	}
	w.Header().Set("X-Total-Count", strconv.Itoa(total))
	w.Header().Set("Link", strings.Join(append(links, link(last, "last")), ", "))
	writeJSON(w, http.StatusOK, items)
}
