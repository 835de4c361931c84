package main

import (
	"bufio"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdStartTimeout bounds how long the member may take to elect itself and
// serve.
const etcdStartTimeout = 60 * time.Second

// etcdMember is the one-member etcd cluster of a -probe -etcd run: this
// program run as a child process (-etcd-member), so that etcd's CPU and
// memory are neither the sidecar's nor the bench's own, and the CPU a
// replica's start costs the cluster can be read from /proc.
type etcdMember struct {
	endpoint string // http://127.0.0.1:PORT
	pid      int
	cmd      *exec.Cmd
	exited   chan error
}

// startEtcd starts the member on 127.0.0.1 with its data in dir and waits
// until it serves.
func startEtcd(dir string) (*etcdMember, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-etcd-member", dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &etcdMember{pid: cmd.Process.Pid, cmd: cmd, exited: make(chan error, 1)}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(l)
		m.exited <- cmd.Wait()
	}()
	select {
	case m.endpoint = <-line:
	case <-time.After(etcdStartTimeout + 5*time.Second):
		m.stop()
		return nil, fmt.Errorf("etcd member: not serving after %v", etcdStartTimeout)
	}
	if !strings.HasPrefix(m.endpoint, "http://127.0.0.1:") {
		m.stop()
		return nil, errors.New("etcd member: did not start")
	}
	return m, nil
}

// stop stops the member: SIGTERM, then SIGKILL after 20 s.
func (m *etcdMember) stop() {
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(20 * time.Second):
		m.cmd.Process.Kill()
		<-m.exited
	}
}

// serveEtcd runs a one-member etcd cluster on 127.0.0.1 with its data in
// dir, prints its client URL once it serves, and stops on SIGTERM. It
// syncs to disk as a production member does (writes here are the
// migration's and the sidecar's lease; a start only reads).
func serveEtcd(dir string) error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	clientAddr, err := freePort()
	if err != nil {
		return err
	}
	peerAddr, err := freePort()
	if err != nil {
		return err
	}
	cu, _ := url.Parse("http://" + clientAddr)
	pu, _ := url.Parse("http://" + peerAddr)
	cfg := embed.NewConfig()
	cfg.Name = "probe"
	cfg.Dir = dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.InitialClusterToken = "tokenvault-bench"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return err
	case <-time.After(etcdStartTimeout):
		return fmt.Errorf("not ready after %v", etcdStartTimeout)
	}
	fmt.Println(cu.String())
	select {
	case <-term:
		return nil
	case err := <-e.Err():
		return err
	}
}
