package main

import (
	_ "embed"
	"io/fs"
	"net/http"
	"slices"

	swaggerfiles "github.com/swaggo/files/v2"
)

// The API's contract and its interactive page: the OpenAPI document at /openapi.json, Swagger
// UI at /docs (its files from the swaggo/files module, which embeds swagger-ui-dist), and the
// redirect of / to /docs. API_DOCS=false leaves these routes out.

// openAPIDocument is the API's contract, written by hand; openapi_test.go keeps it true.
//
//go:embed openapi.json
var openAPIDocument []byte

func handleOpenAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPIDocument)
	})
}

// docsPolicy is the Content-Security-Policy of the Swagger UI page: scripts, styles and
// requests of this origin only, so that neither a script injected into the page (through a
// description, say) nor one from elsewhere runs, and the token typed into "Authorize" can be
// sent nowhere else. Swagger UI draws some icons as data: images.
const docsPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// docsPage loads Swagger UI. Its URLs are relative, so that it works behind a proxy that
// serves the API under a path prefix too.
const docsPage = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>usermgmt API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="stylesheet" href="docs/index.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="docs/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/swagger-initializer.js"></script>
</body>
</html>
`

// docsInitializer starts Swagger UI on this server's document. It is a file of its own, not
// an inline script, so that the page's policy needs no 'unsafe-inline'. It replaces the one of
// swagger-ui-dist, which loads the Petstore example from the Internet.
const docsInitializer = `window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
`

func handleDocs() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", docsPolicy)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(docsPage))
	})
}

// docsFiles are the files of the page that come from swagger-ui-dist as they are.
var docsFiles = []string{"swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-16x16.png", "favicon-32x32.png"}

// handleDocsFile serves the page's scripts, style sheets and icons; any other name is 404.
func handleDocsFile() apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		name := r.PathValue("file")
		// The files change only with the binary: browsers may keep them for an hour.
		cacheFor := func() { w.Header().Set("Cache-Control", "public, max-age=3600") }
		if name == "swagger-initializer.js" {
			cacheFor()
			w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
			_, _ = w.Write([]byte(docsInitializer))
			return nil
		}
		if !slices.Contains(docsFiles, name) {
			return fail(errNotFound, "Not found")
		}
		if _, err := fs.Stat(swaggerfiles.FS, name); err != nil {
			return err // the module lost a file it had: a 500, and the test of every file fails
		}
		cacheFor()
		http.ServeFileFS(w, r, swaggerfiles.FS, name)
		return nil
	}
}

// handleDocsRedirect sends a browser that opens the server's address to the documentation.
func handleDocsRedirect() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/docs")
		writeJSON(w, http.StatusFound, message{"The API documentation is at /docs"})
	})
}
