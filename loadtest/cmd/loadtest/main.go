// Command loadtest measures sidemesh's services.
package main

import (
	"context"

	"github.com/sidemesh/sidemesh/internal/app"
)

func main() {
	app.Main(app.Spec{
		Name:      "loadtest",
		EnvPrefix: "LOADTEST",
		Summary:   "load-test harness for sidemesh (skeleton: no scenarios yet)",
		Run: func(ctx context.Context, env *app.Env) error {
			return app.Usagef("no scenario given (scenarios arrive with the load-test issue)")
		},
	})
}
