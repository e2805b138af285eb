//! The management API over real HTTP: token auth, atomic apply errors, get/delete, and meshctl's
//! client against it.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use mesh_control_plane::api::Api;
use mesh_control_plane::client::ApiClient;
use mesh_control_plane::controller::Controller;
use mesh_control_plane::store::Store;
use mesh_control_plane::vip::VipRange;

const SERVICE: &str = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}], selector: {app: web}}\n";

async fn start(token: Option<&str>) -> (String, Arc<Controller>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = Controller::open(
        Store::open(dir.path()).expect("store"),
        VipRange::default(),
        Duration::from_secs(1),
    )
    .expect("controller");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(Api::new(controller.clone(), token.map(str::to_string)).serve(listener));
    (format!("http://{addr}"), controller, dir)
}

#[tokio::test]
async fn a_token_is_required_on_v1_when_configured() {
    let (server, _c, _dir) = start(Some("s3cret")).await;
    let anonymous = ApiClient::new(&server, None).expect("client");
    let (status, _) = anonymous
        .request(Method::GET, "/v1/resources/services", None)
        .await
        .expect("request");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let wrong = ApiClient::new(&server, Some("guess".into())).expect("client");
    assert_eq!(
        wrong
            .request(Method::GET, "/v1/proxies", None)
            .await
            .expect("request")
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = anonymous
        .request(Method::GET, "/ready", None)
        .await
        .expect("request");
    assert_eq!(status, StatusCode::OK, "/ready needs no token");
    let right = ApiClient::new(&server, Some("s3cret".into())).expect("client");
    let (status, body) = right
        .request(Method::POST, "/v1/apply", Some(SERVICE.into()))
        .await
        .expect("request");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn apply_is_all_or_nothing_and_errors_name_the_field() {
    let (server, controller, _dir) = start(None).await;
    let client = ApiClient::new(&server, None).expect("client");
    let bad = format!(
        "{SERVICE}---\napiVersion: mesh.dev/v1\nkind: Service\nmetadata: {{name: db}}\nspec: {{ports: [{{port: 0}}]}}\n"
    );
    let (status, body) = client
        .request(Method::POST, "/v1/apply", Some(bad))
        .await
        .expect("request");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("document 2 (Service default/db): spec.ports[0].port: `0` is not a port"),
        "{text}"
    );
    assert!(
        controller
            .list(mesh_control_plane::resource::Kind::Service, None)
            .is_empty(),
        "document 1 was not applied either"
    );
    assert_eq!(controller.revision(), 0);

    let (status, _) = client
        .request(Method::POST, "/v1/apply", Some(SERVICE.into()))
        .await
        .expect("request");
    assert_eq!(status, StatusCode::OK);
    let (status, body) = client
        .request(Method::GET, "/v1/resources/svc/default/web", None)
        .await
        .expect("request");
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("\"vip\": \"10.96.0.1\""));
    let (status, _) = client
        .request(Method::DELETE, "/v1/resources/services/default/web", None)
        .await
        .expect("request");
    assert_eq!(status, StatusCode::OK);
    let (status, _) = client
        .request(Method::DELETE, "/v1/resources/services/default/web", None)
        .await
        .expect("request");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = client
        .request(Method::GET, "/v1/history", None)
        .await
        .expect("request");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&body)
            .matches("\"revision\"")
            .count(),
        2,
        "apply and delete recorded"
    );
}
