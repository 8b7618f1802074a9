package main

import (
	"fmt"
	"net"
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

// nameProblem keeps names fit to show and to mail. The rule goes by Unicode category rather
// than a list: letters, marks, digits, punctuation, symbols and spaces pass; controls (Cc),
// format characters (Cf: bidirectional controls that reorder the text around the name,
// zero-width spaces, the BOM), line and paragraph separators (Zl, Zp), private-use,
// surrogate and unassigned code points are refused. A name must also show something: one
// made only of spaces and characters that render as nothing would pass for "no name".
func nameProblem(s string) string {
	if !utf8.ValidString(s) {
		return "must be valid UTF-8"
	}
	if n := utf8.RuneCountInString(s); n < 1 || n > 80 {
		return "must be 1 to 80 characters"
	}
	visible := false
	for i, r := range s {
		if problem := nameCharProblem(s, i, r); problem != "" {
			return problem
		}
		visible = visible || isVisible(r)
	}
	if !visible {
		return "must contain a visible character, not only spaces or invisible ones"
	}
	return ""
}

// nameCharProblem judges the character r at byte offset i of the name s.
func nameCharProblem(s string, i int, r rune) string {
	switch {
	case unicode.Is(unicode.Cc, r):
		return "must not contain control characters"
	case unicode.Is(unicode.Bidi_Control, r):
		return "must not contain bidirectional control characters"
	case unicode.In(r, unicode.Zl, unicode.Zp):
		return "must not contain line or paragraph separators"
	case r == '\u200c' || r == '\u200d':
		// The zero-width non-joiner and joiner are format characters that Persian and Indic
		// names and emoji sequences need, so they pass, but only between two characters
		// that show: never leading, trailing, doubled or alone.
		prev, before := utf8.DecodeLastRuneInString(s[:i])
		next, after := utf8.DecodeRuneInString(s[i+utf8.RuneLen(r):])
		if before == 0 || after == 0 || !isGraphic(prev) || !isGraphic(next) {
			return "must not contain a zero-width joiner or non-joiner except between two characters"
		}
	case !isGraphic(r) && !unicode.Is(unicode.Zs, r):
		return "must not contain invisible formatting, private-use or unassigned characters"
	}
	return ""
}

// isGraphic reports a letter, mark, digit, punctuation or symbol.
func isGraphic(r rune) bool {
	return unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S)
}

// isVisible reports a character that shows on its own: graphic, not a mark (which needs a base),
// and not one of the letters and symbols that render as nothing (the Hangul fillers and the
// other default-ignorable code points, variation selectors, the blank Braille pattern).
func isVisible(r rune) bool {
	return unicode.In(r, unicode.L, unicode.N, unicode.P, unicode.S) && r != '\u2800' &&
		!unicode.In(r, unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector)
}

// emailProblem admits only addresses that mail can carry correctly to a host found by name.
// Mail is sent without SMTPUTF8, so an address must be ASCII (a non-ASCII one would go out raw
// in RCPT TO and To:). IP literals (x@[127.0.0.1]), numeric domains (x@127.0.0.1) and dotless
// ones (x@localhost), and local parts with the routing characters % and !, are refused: they
// would let a user make the relay deliver to a host of their choosing, internal ones among them.
func emailProblem(s string) string {
	switch {
	case s == "":
		return "is required"
	case len(s) > 254:
		return "must be at most 254 characters"
	}
	for _, c := range []byte(s) {
		if c >= utf8.RuneSelf {
			return "must contain only ASCII characters (internationalized addresses are not supported)"
		}
		if c <= ' ' || c == 0x7f {
			return "must not contain spaces or control characters"
		}
	}
	// A bare address only: no display name, comment, quoted local part or route.
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || domain == "" || strings.Contains(domain, "@") {
		return "must be a valid email address"
	}
	if problem := localPartProblem(local); problem != "" {
		return problem
	}
	return domainProblem(domain)
}

// localPartProblem checks what comes before the @: a dot-atom of at most 64 characters.
func localPartProblem(local string) string {
	if len(local) > 64 {
		return "must have at most 64 characters before the @"
	}
	for _, atom := range strings.Split(local, ".") {
		for _, c := range []byte(atom) {
			if c == '%' || c == '!' {
				return "must not contain '%' or '!', which some mail relays take as a route to another host"
			}
			if !isAtext(c) {
				return "must be a valid email address"
			}
		}
		if atom == "" { // a leading, trailing or doubled dot
			return "must be a valid email address"
		}
	}
	return ""
}

// isAtext reports the characters RFC 5322 allows in an atom, besides letters and digits.
func isAtext(c byte) bool {
	return isLetterOrDigit(c) || strings.IndexByte("#$&'*+-/=?^_`{|}~%!", c) >= 0
}

func isLetterOrDigit(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// domainProblem checks what comes after the @: a host name of at least two labels, each 1 to
// 63 letters, digits and hyphens not at either end, the last one starting with a letter as
// every top-level domain does (so that no spelling of an IP address, 127.1 or 0x7f.1, passes).
func domainProblem(domain string) string {
	if domain[0] == '[' || net.ParseIP(domain) != nil {
		return "must have a domain name, not an IP address"
	}
	labels := strings.Split(domain, ".")
	if len(labels) < 2 {
		return "must have a domain name with a dot in it, such as example.com"
	}
	for _, label := range labels {
		if !isHostLabel(label) {
			return "must have a domain name made of letters, digits and hyphens, in labels of 1 to 63 characters that neither start nor end with a hyphen"
		}
	}
	if tld := labels[len(labels)-1]; !(tld[0] >= 'a' && tld[0] <= 'z' || tld[0] >= 'A' && tld[0] <= 'Z') {
		return "must end in a top-level domain that starts with a letter, such as .com"
	}
	return ""
}

// isHostLabel reports a label of a host name (RFC 1123).
func isHostLabel(label string) bool {
	if n := len(label); n < 1 || n > 63 || label[0] == '-' || label[n-1] == '-' {
		return false
	}
	for _, c := range []byte(label) {
		if !isLetterOrDigit(c) && c != '-' {
			return false
		}
	}
	return true
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
