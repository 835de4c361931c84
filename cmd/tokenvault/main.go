// Command tokenvault is the tokenvault sidecar and its operator CLI.
//
//	tokenvault serve [--dev] [--config FILE] [flags]
//	tokenvault connections list|get|revoke|validate|update|delete|delete-owner|import|exchange [flags]
//	tokenvault connect OWNER PROVIDER [flags]
//	tokenvault token CONNECTION_ID [flags]
//	tokenvault token --owner OWNER --provider PROVIDER [--label LABEL] [flags]
//	tokenvault keys rotate|retire|rekey
//	tokenvault records unreadable
//	tokenvault audit [flags]
//	tokenvault store migrate --from FILE --to CONFIG [--force]
//	tokenvault health [--addr HOST:PORT] [--live]
//	tokenvault inject --tls-cert-file F --tls-key-file F --image IMAGE [flags]
//	tokenvault version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	// First of the program's own packages to initialise: see its doc.
	_ "github.com/tokenvault/tokenvault/cmd/tokenvault/internal/hugestart"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

const usage = `tokenvault holds your users' OAuth connections beside your application.

Usage:
  tokenvault serve [--dev] [--config FILE] [flags]   run the sidecar
  tokenvault connections list [--owner O] [--provider P] [--status S] [-o json]
  tokenvault connections get CONNECTION_ID [-o json]
  tokenvault connections revoke CONNECTION_ID [--reason R]
  tokenvault connections validate CONNECTION_ID [-o json]
  tokenvault connections update CONNECTION_ID [--set K=V]... [--remove K]...
  tokenvault connections delete CONNECTION_ID [--reason R]
  tokenvault connections delete-owner OWNER [--reason R]
  tokenvault connections import FILE|- [--dry-run] [--verify] [-o json]
  tokenvault connections exchange --provider slack [--dry-run]
  tokenvault connect OWNER PROVIDER [--scopes S,S] [--return-to URL] [--label L]   print a URL to connect
  tokenvault token CONNECTION_ID [--min-valid 5m] [--force] [--credential NAME]
  tokenvault token --owner OWNER --provider PROVIDER [--label LABEL] [--tenant TENANT] [...]
  tokenvault keys rotate                              new data-key term; re-seal every record
  tokenvault keys retire                              drop data-key terms no record uses
  tokenvault keys rekey --new-master-key-file FILE    seal the keyring under a new master key
  tokenvault records unreadable [-o json]             list quarantined (damaged) records
  tokenvault audit [--connection ID] [--caller C] [--method M] [--limit N] [-o json]
  tokenvault store migrate --from FILE --to CONFIG [--force]   copy a bbolt store to etcd
  tokenvault health [--addr HOST:PORT] [--live]      exit 0 if the sidecar is ready (alive)
  tokenvault inject --tls-cert-file F --tls-key-file F --image IMAGE   the Kubernetes injector (admission webhook)
  tokenvault version

Operator commands talk to a running sidecar at --addr (default
$TOKENVAULT_ADDR or 127.0.0.1:7070) and present the API key in
--api-key-file or $TOKENVAULT_API_KEY. 'health' asks the health listener at
--addr (default $TOKENVAULT_HEALTH_ADDR or 127.0.0.1:7072). Run 'tokenvault COMMAND -h' for flags.
`

// Main runs the command line args and returns the process exit code. It is
// the whole program: main only supplies the process's environment, so tests
// run it in-process.
func Main(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], env, stdout, stderr)
	case "connections":
		err = connectionsCmd(ctx, args[1:], env, stdout)
	case "connect":
		err = connectCmd(ctx, args[1:], env, stdout)
	case "token":
		err = tokenCmd(ctx, args[1:], env, stdout)
	case "keys":
		err = keysCmd(ctx, args[1:], env, stdout)
	case "records":
		err = recordsCmd(ctx, args[1:], env, stdout)
	case "audit":
		err = auditCmd(ctx, args[1:], env, stdout)
	case "store":
		err = storeCmd(ctx, args[1:], env, stdout, stderr)
	case "health":
		err = healthCmd(ctx, args[1:], env, stdout, stderr)
	case "inject":
		err = injectCmd(ctx, args[1:], env, stdout, stderr)
	case "version", "--version":
		err = versionCmd(args[1:], stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "tokenvault: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if err == errUsage {
			return 2
		}
		fmt.Fprintf(stderr, "tokenvault %s: %v\n", args[0], err)
		return 1
	}
	return 0
}
