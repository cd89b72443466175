// Swagger UI over trackd's own OpenAPI document: same origin, nothing fetched elsewhere
// (no validator badge), "Try it out" on from the start so that a number is two clicks away.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
