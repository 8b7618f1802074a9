package main

import (
	"fmt"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Field rules shared by registration, profile updates and the first-admin command. Each
// returns "" for a good value and otherwise the reason, worded to follow the field name.

// check records problem under field when there is one, and returns problems.
func check(problems map[string]string, field, problem string) map[string]string {
	if problem != "" {
		problems[field] = problem
	}
	return problems
}

func usernameProblem(s string) string {
	if n := len(s); n < 3 || n > 80 {
		return "must be 3 to 80 characters"
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return "may contain only letters, digits, '_', '.' and '-'"
		}
	}
	return ""
}

func nameProblem(s string) string {
	if n := utf8.RuneCountInString(s); n < 1 || n > 80 {
		return "must be 1 to 80 characters"
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return "must not contain control characters"
	}
	if strings.TrimSpace(s) == "" {
		return "must not be blank"
	}
	return ""
}

func emailProblem(s string) string {
	if s == "" {
		return "is required"
	}
	if len(s) > 254 {
		return "must be at most 254 characters"
	}
	// A bare address only: no display name, comments or surrounding spaces.
	addr, err := mail.ParseAddress(s)
	if err != nil || addr.Address != s || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return "must be a valid email address"
	}
	return ""
}

// foldCase is the one definition of "the same username" and "the same address": equal once
// the ASCII letters A-Z are lowered, and nothing else folded. In SQL it is lower(x COLLATE "C"),
// which folds A-Z alone whatever the database's collation, in every comparison and in the
// unique indexes. (strings.EqualFold and a plain lower() each fold their own sets of non-ASCII
// letters, U+0130, U+017F and U+212A among them, so two values could be one account to the
// database and two to the code.) It works on bytes, as PostgreSQL does, so that invalid UTF-8
// cannot make two values equal either.
func foldCase(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// sameFold reports whether a and b are the same username, or the same address (see foldCase).
func sameFold(a, b string) bool { return foldCase(a) == foldCase(b) }

// textProblem rejects what PostgreSQL text cannot hold: NUL bytes and invalid UTF-8. Fields
// with their own rules already exclude both; this guards free text such as searches.
func textProblem(s string) string {
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		return "must be valid UTF-8 text without NUL characters"
	}
	return ""
}

// storableText makes client-supplied text fit for a text column: invalid UTF-8 and NUL
// replaced, and cut to at most limit bytes on a character boundary.
func storableText(s string, limit int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) > limit {
		s = s[:limit]
		for !utf8.ValidString(s) { // a character cut in two at the end
			s = s[:len(s)-1]
		}
	}
	return s
}

func passwordProblem(s string, minLength int) string {
	if utf8.RuneCountInString(s) < minLength {
		return fmt.Sprintf("must be at least %d characters", minLength)
	}
	// bcrypt ignores everything after 72 bytes; refusing longer passwords keeps that honest.
	if len(s) > 72 {
		return "must be at most 72 bytes"
	}
	return ""
}
