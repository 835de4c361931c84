// Package etcdtest starts real etcd clusters inside a test process, with
// go.etcd.io/etcd/server/v3/embed: one or three members on 127.0.0.1 with
// ports of their own and data in t.TempDir(), so tests need nothing
// installed. Members run without fsync and with short election timeouts:
// fast and deterministic enough for tests, never for production.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// startTimeout bounds how long a cluster may take to elect a leader and
// serve (generous: -race on a loaded two-core machine).
const startTimeout = 60 * time.Second

// A Cluster is a running etcd cluster of the test.
type Cluster struct {
	t       testing.TB
	mu      sync.Mutex
	members []*Member
}

// A Member is one etcd server of a Cluster.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	dir       string
	etcd      *embed.Etcd // nil while stopped
}

// Start starts a cluster of n members (1 or 3, usually) and waits until it
// serves. The cluster is closed when the test ends. A port another process
// took between freeAddr and the member's listen is not a failure: the
// cluster is started again on other ports, up to startAttempts times.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c, err := tryStart(t, n)
		if err == nil {
			t.Cleanup(c.Close)
			return c
		}
		c.Close()
		if attempt == startAttempts || !portTaken(err) {
			t.Fatalf("etcdtest: %v", err)
		}
		t.Logf("etcdtest: %v; starting again on other ports", err)
	}
}

// startAttempts bounds Start's retries after a port was taken.
const startAttempts = 5

// portTaken reports whether err is a listen on a port in use.
func portTaken(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

func tryStart(t testing.TB, n int) (*Cluster, error) {
	c := &Cluster{t: t}
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: "http://" + freeAddr(t),
			PeerURL:   "http://" + freeAddr(t),
			dir:       t.TempDir(),
		}
		c.members = append(c.members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	// Members of a new cluster wait for each other: start them together.
	errs := make(chan error, n)
	for _, m := range c.members {
		go func() { errs <- c.start(m, strings.Join(initial, ","), "new") }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && (first == nil || portTaken(err)) {
			first = err
		}
	}
	return c, first
}

// freeAddr returns a loopback address with a port free a moment ago. (etcd
// must know every member's peer URL before any starts, so port 0 will not
// do for clusters; the window in which another process could take the
// port is short.)
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (c *Cluster) start(m *Member, initial, state string) error {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.dir
	cu, _ := url.Parse(m.ClientURL)
	pu, _ := url.Parse(m.PeerURL)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = initial
	cfg.ClusterState = state
	cfg.InitialClusterToken = "etcdtest"
	cfg.UnsafeNoFsync = true
	// Elections in about half a second, so a test that stops the leader
	// waits for a new one briefly.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("start %s: %w", m.Name, err)
	case <-time.After(startTimeout):
		e.Close()
		return fmt.Errorf("start %s: not ready after %v", m.Name, startTimeout)
	}
	c.mu.Lock()
	m.etcd = e
	c.mu.Unlock()
	return nil
}

// Endpoints returns the client URLs of every member, stopped ones too (a
// client tries the others).
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.ClientURL)
	}
	return eps
}

// Members returns the cluster's members.
func (c *Cluster) Members() []*Member { return c.members }

// Client returns a client of the cluster, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Leader returns the index of the member that is the leader now, waiting
// for an election if there is none.
func (c *Cluster) Leader(t testing.TB) int {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for i, m := range c.members {
			if m.etcd == nil {
				continue
			}
			if lead := m.etcd.Server.Lead(); lead != 0 && lead == uint64(m.etcd.Server.MemberID()) {
				c.mu.Unlock()
				return i
			}
		}
		c.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("etcdtest: no leader after %v", startTimeout)
	return -1
}

// Stop stops member i; its data stays for Restart.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	e := c.members[i].etcd
	c.members[i].etcd = nil
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts the stopped member i again on its data and addresses.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	var initial []string
	for _, m := range c.members {
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	if err := c.start(c.members[i], strings.Join(initial, ","), "existing"); err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
}

// Compact compacts the cluster's history up to its current revision, as an
// operator's (or etcd's automatic) compaction would.
func (c *Cluster) Compact(t testing.TB) {
	t.Helper()
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "\x00")
	if err != nil {
		t.Fatalf("etcdtest: compact: %v", err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: compact: %v", err)
	}
}

// Close stops every member. It is called when the test ends.
func (c *Cluster) Close() {
	for i := range c.members {
		c.Stop(i)
	}
}
