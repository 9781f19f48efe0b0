//! Accounts and sessions: registration (and its token validity check), login, logout, refresh
//! tokens, login tokens, `whoami`, password change, deactivation.

use axum::{Router, extract::State};
use rhizome_core::{Error, error::MatrixErrorKind};
use rhizome_service::{
    Requester,
    users::{RegisterRequest, Session},
};
use ruma::api::client::{
    account::{
        ThirdPartyIdRemovalStatus, change_password, check_registration_token_validity, deactivate,
        get_3pids, get_username_availability, register, whoami,
    },
    session::{get_login_token, get_login_types, login, logout, logout_all, refresh_token},
    uiaa::{AuthFlow, AuthType, UserIdentifier},
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_login_types::v3::Request, _, _>(router, login_types);
    let router = add::<login::v3::Request, _, _>(router, login);
    let router = add::<logout::v3::Request, _, _>(router, logout);
    let router = add::<logout_all::v3::Request, _, _>(router, logout_all);
    let router = add::<refresh_token::v3::Request, _, _>(router, refresh);
    let router = add::<get_login_token::v1::Request, _, _>(router, login_token);
    let router = add::<register::v3::Request, _, _>(router, register);
    let router = add::<get_username_availability::v3::Request, _, _>(router, username_availability);
    let router = add::<check_registration_token_validity::v1::Request, _, _>(
        router,
        registration_token_validity,
    );
    let router = add::<whoami::v3::Request, _, _>(router, whoami);
    let router = add::<change_password::v3::Request, _, _>(router, change_password);
    let router = add::<deactivate::v3::Request, _, _>(router, deactivate);
    add::<get_3pids::v3::Request, _, _>(router, third_party_ids)
}

async fn login_types(
    _: Ruma<get_login_types::v3::Request>,
) -> ApiResult<get_login_types::v3::Response> {
    let mut token = get_login_types::v3::TokenLoginType::new();
    token.get_login_token = true;
    Ok(RumaResponse(get_login_types::v3::Response::new(vec![
        get_login_types::v3::LoginType::Password(get_login_types::v3::PasswordLoginType::new()),
        get_login_types::v3::LoginType::Token(token),
    ])))
}

fn login_response(session: Session) -> login::v3::Response {
    let mut response =
        login::v3::Response::new(session.user_id, session.access_token, session.device_id);
    response.refresh_token = session.refresh_token;
    response.expires_in = session.expires_in;
    response
}

async fn login(
    State(services): State<AppState>,
    request: Ruma<login::v3::Request>,
) -> ApiResult<login::v3::Response> {
    let body = &request.body;
    let display_name = body.initial_device_display_name.as_deref();
    let session = match &body.login_info {
        login::v3::LoginInfo::Password(password) => {
            // `user` is deprecated but still sent by old clients.
            #[allow(deprecated)]
            let user = match (&password.identifier, &password.user) {
                (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
                (None, Some(user)) => user.clone(),
                _ => return Err(Error::forbidden("Only user ID identifiers are supported").into()),
            };
            services
                .login_with_password(
                    &user,
                    &password.password,
                    body.device_id.clone(),
                    display_name,
                    body.refresh_token,
                    &request.client_key,
                )
                .await?
        }
        login::v3::LoginInfo::Token(token) => {
            services
                .login_with_token(
                    &token.token,
                    body.device_id.clone(),
                    display_name,
                    body.refresh_token,
                    &request.client_key,
                )
                .await?
        }
        _ => return Err(Error::matrix(MatrixErrorKind::Unknown, "Unsupported login type").into()),
    };
    Ok(RumaResponse(login_response(session)))
}

async fn logout(
    State(services): State<AppState>,
    request: Ruma<logout::v3::Request>,
) -> ApiResult<logout::v3::Response> {
    services.logout(request.requester()?).await?;
    Ok(RumaResponse(logout::v3::Response::new()))
}

async fn logout_all(
    State(services): State<AppState>,
    request: Ruma<logout_all::v3::Request>,
) -> ApiResult<logout_all::v3::Response> {
    services.logout_all(&request.requester()?.user_id).await?;
    Ok(RumaResponse(logout_all::v3::Response::new()))
}

async fn refresh(
    State(services): State<AppState>,
    request: Ruma<refresh_token::v3::Request>,
) -> ApiResult<refresh_token::v3::Response> {
    let session = services.refresh_session(&request.body.refresh_token).await?;
    let mut response = refresh_token::v3::Response::new(session.access_token);
    response.refresh_token = session.refresh_token;
    response.expires_in_ms = session.expires_in;
    Ok(RumaResponse(response))
}

async fn login_token(
    State(services): State<AppState>,
    request: Ruma<get_login_token::v1::Request>,
) -> ApiResult<get_login_token::v1::Response> {
    let requester: &Requester = request.requester()?;
    services
        .check_uia(
            request.body.auth.as_ref(),
            vec![AuthFlow::new(vec![AuthType::Password])],
            rhizome_service::users::uia::UiaPurpose::Account(requester.user_id.clone()),
        )
        .await?;
    let token = services.create_login_token(&requester.user_id).await?;
    let lifetime = std::time::Duration::from_millis(
        u64::try_from(rhizome_service::users::LOGIN_TOKEN_LIFETIME_MS).unwrap_or(120_000),
    );
    Ok(RumaResponse(get_login_token::v1::Response::new(lifetime, token)))
}

async fn register(
    State(services): State<AppState>,
    request: Ruma<register::v3::Request>,
) -> ApiResult<register::v3::Response> {
    let body = request.body;
    if body.kind == register::RegistrationKind::Guest {
        return Err(Error::matrix(
            MatrixErrorKind::GuestAccessForbidden,
            "Guest accounts are not available",
        )
        .into());
    }
    let registered = services
        .register(
            RegisterRequest {
                username: body.username,
                password: body.password,
                device_id: body.device_id,
                initial_device_display_name: body.initial_device_display_name,
                inhibit_login: body.inhibit_login,
                refresh_token: body.refresh_token,
                auth: body.auth,
            },
            &request.client_key,
        )
        .await?;
    let mut response = register::v3::Response::new(registered.user_id);
    if let Some(session) = registered.session {
        response.access_token = Some(session.access_token);
        response.device_id = Some(session.device_id);
        response.refresh_token = session.refresh_token;
        response.expires_in = session.expires_in;
    }
    Ok(RumaResponse(response))
}

async fn username_availability(
    State(services): State<AppState>,
    request: Ruma<get_username_availability::v3::Request>,
) -> ApiResult<get_username_availability::v3::Response> {
    services.check_username_available(&request.body.username.to_lowercase()).await?;
    Ok(RumaResponse(get_username_availability::v3::Response::new(true)))
}

async fn registration_token_validity(
    State(services): State<AppState>,
    request: Ruma<check_registration_token_validity::v1::Request>,
) -> ApiResult<check_registration_token_validity::v1::Response> {
    services.rate_limiter.check(
        rhizome_service::rate_limit::Action::RegistrationTokenValidity,
        &request.client_key,
    )?;
    let valid = services.registration_token_is_valid(&request.body.token).await?;
    Ok(RumaResponse(check_registration_token_validity::v1::Response::new(valid)))
}

async fn whoami(request: Ruma<whoami::v3::Request>) -> ApiResult<whoami::v3::Response> {
    let requester = request.requester()?;
    let mut response = whoami::v3::Response::new(requester.user_id.clone(), false);
    response.device_id = Some(requester.device_id.clone());
    Ok(RumaResponse(response))
}

async fn change_password(
    State(services): State<AppState>,
    request: Ruma<change_password::v3::Request>,
) -> ApiResult<change_password::v3::Response> {
    let requester = request.requester()?;
    let body = &request.body;
    services
        .change_password(requester, &body.new_password, body.logout_devices, body.auth.as_ref())
        .await?;
    Ok(RumaResponse(change_password::v3::Response::new()))
}

async fn deactivate(
    State(services): State<AppState>,
    request: Ruma<deactivate::v3::Request>,
) -> ApiResult<deactivate::v3::Response> {
    services.deactivate_account(request.requester()?, request.body.auth.as_ref()).await?;
    Ok(RumaResponse(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport)))
}

async fn third_party_ids(
    request: Ruma<get_3pids::v3::Request>,
) -> ApiResult<get_3pids::v3::Response> {
    request.requester()?;
    Ok(RumaResponse(get_3pids::v3::Response::new(Vec::new())))
}
