// Command proxy is the sidemesh xDS-driven L7 proxy.
package main

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
)

func main() {
	app.Main(app.Spec{
		Name:      "proxy",
		EnvPrefix: "PROXY",
		Summary:   "sidemesh xDS-driven L7 proxy (skeleton: serves only its admin endpoints so far)",
		AdminAddr: "127.0.0.1:15000",
		Flags:     func(fs *pflag.FlagSet) {},
		Run: func(ctx context.Context, env *app.Env) error {
			return env.Serve()
		},
	})
}
