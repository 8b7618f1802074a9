// Command usermgmt is a user management HTTP API: registration, login with JWT access
// tokens, password reset by email, and role-based user administration, on PostgreSQL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// usermgmt: a user management HTTP API backed by PostgreSQL. main runs run, which starts the
// server (or the -create-admin command) and shuts it down gracefully.

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "usermgmt:", err)
		os.Exit(1)
	}
}

// run is the whole program: main only supplies the process's arguments, environment and
// standard streams, so tests can start it with their own.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	flags := flag.NewFlagSet(args[0], flag.ContinueOnError)
	flags.SetOutput(stdout)
	envFile := flags.String("env-file", ".env", "read settings from this file; the environment wins (empty: none)")
	createAdmin := flags.Bool("create-admin", false, "create the first admin account and exit")
	pprofAddr := flags.String("pprof", "", "serve Go profiles on this loopback address, e.g. 127.0.0.1:6060 (empty: off)")
	var admin newUser
	flags.StringVar(&admin.Username, "username", "", "with -create-admin: the admin's username")
	flags.StringVar(&admin.Email, "email", "", "with -create-admin: the admin's email")
	flags.StringVar(&admin.FirstName, "first-name", "", "with -create-admin: the admin's first name")
	flags.StringVar(&admin.LastName, "last-name", "", "with -create-admin: the admin's last name")
	if err := flags.Parse(args[1:]); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	getenv, err := withEnvFile(getenv, *envFile)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	logs := newLogBuffer(stdout)
	defer logs.flush()
	logger := newLogger(logs, cfg.logFormat)
	st, err := openStore(ctx, cfg, time.Now, 30*time.Second)
	if err != nil {
		return openError(err)
	}
	defer st.close()
	if *createAdmin {
		return runCreateAdmin(ctx, cfg, st, admin, stdin, stdout)
	}
	if *pprofAddr != "" {
		if err := servePprof(*pprofAddr, logger); err != nil {
			return err
		}
	}
	return serve(ctx, cfg, st, logger)
}

// The log formats of LOG_FORMAT: the same records and fields, as logfmt-style text or as one
// JSON object per line for log pipelines.
const (
	logText = "text"
	logJSON = "json"
)

func newLogger(w io.Writer, format string) *slog.Logger {
	if format == logJSON {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// serve listens on cfg.addr, serves until ctx is done, then drains in-flight requests.
func serve(ctx context.Context, cfg config, st *store, logger *slog.Logger) error {
	// Listening first makes a taken port fail at once, with a clear error.
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if st.schemaApplied {
		logger.Info("schema applied")
	} else {
		logger.Info("schema up to date")
	}
	pw := newHasher(cfg.bcryptCost, cfg.bcryptConcurrency)
	pw.procs = newProcsRaiser()
	if cfg.metricsAddr != "" {
		stopMetrics, err := serveMetrics(cfg.metricsAddr, st, pw, logger)
		if err != nil {
			ln.Close()
			return err
		}
		defer stopMetrics()
	}
	if cfg.mail.backend == mailDummy {
		logger.Warn("MAIL_BACKEND=dummy: password reset tokens are returned in API responses; never use this in production")
	}
	background, stopBackground := context.WithCancel(ctx)
	if cfg.tuneGC {
		go tuneGC(background)
	}
	go sweepExpired(background, st, logger)
	outboxDone := make(chan struct{})
	go func() { runOutbox(background, cfg.mail, st, logger); close(outboxDone) }()
	webhooksDone := make(chan struct{})
	go func() { runWebhooks(background, cfg.webhook, st, logger); close(webhooksDone) }()
	defer func() {
		stopBackground()
		<-outboxDone   // a message being sent is finished before exit
		<-webhooksDone // so are the webhook deliveries in flight
	}()
	srv := &http.Server{
		Handler:           newServer(cfg, st, pw, logger),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("listening", "addr", ln.Addr().String())
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down: draining in-flight requests")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
