// Command idle holds keep-alive connections open to a server, as many browsers and clients
// that sent one request and stayed would: it opens -n connections to -addr, sends each one
// request (-path) and reads the reply, then keeps every connection open and silent until it
// is sent SIGTERM or SIGINT. It prints "ready N" once all are open, for bench/run.sh. The
// process's own open-file limit is raised to what -n needs.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "server address, host:port")
	n := flag.Int("n", 10000, "connections to hold open")
	path := flag.String("path", "/healthz", "path of each connection's one request")
	flag.Parse()
	if err := raiseFileLimit(uint64(*n) + 64); err != nil {
		log.Fatalf("raise the open-file limit: %v", err)
	}
	conns, err := openAll(*addr, *path, *n)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("ready %d\n", len(conns))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	for _, c := range conns {
		_ = c.Close()
	}
}

// openAll opens n connections, 64 at a time, each having served one request.
func openAll(addr, path string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := openOne(addr, path)
			conns[i] = c
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return conns, nil
}

func openOne(addr, path string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, fmt.Errorf("read reply: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.Close {
		return nil, fmt.Errorf("the server closed a keep-alive connection (status %d)", resp.StatusCode)
	}
	return c, c.SetDeadline(time.Time{})
}

func raiseFileLimit(n uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= n {
		return nil
	}
	l.Cur = min(max(n, l.Cur), l.Max)
	if l.Cur < n {
		return fmt.Errorf("the hard limit %d is below %d", l.Max, n)
	}
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}
