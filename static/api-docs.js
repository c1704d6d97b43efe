// The API reference page (/api/v1/docs): Swagger UI over this server's own
// OpenAPI document. "Try it out" sends real requests to this server.
/* global SwaggerUIBundle */
window.ui = SwaggerUIBundle({
  url: '/api/v1/openapi.json',
  dom_id: '#swagger-ui',
  deepLinking: true,
  defaultModelsExpandDepth: 0,
  displayOperationId: true,
});
